"""Scoring arbitrary wav files with a trained model: the path for monitoring a real machine.

The files go through exactly the data_prep path (decode, segment, log-mel with the model's own feature
settings) into a temporary shard, and are scored from it, so nothing here can drift from training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from asd.cache.audio import BadAudio, read_clip
from asd.cache.features import FeatureConfig, segment_features
from asd.cache.shard import Shard
from asd.cache.writer import ShardWriter
from asd.dataset.layout import UnparseableName, parse_clip_name
from asd.engine.train import ALL_SECTIONS, threshold_for
from asd.errors import BadInput, MissingModel
from asd.models.base import load_detector


def _wav_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in Path(path).rglob("*") if p.suffix.lower() == ".wav") if path.is_dir() \
            else [Path(path)]
    return files


def _model_path(run_dir: Path, machine: str, dataset: str | None) -> Path:
    candidates = sorted(Path(run_dir).rglob(f"{machine}/model.pt"))
    if dataset is not None:
        candidates = [c for c in candidates if c.parent.parent.relative_to(run_dir).as_posix() == dataset]
    if not candidates:
        raise MissingModel(f"no trained model for machine type {machine!r} in {run_dir}")
    if len(candidates) > 1:
        names = [c.parent.parent.relative_to(run_dir).as_posix() for c in candidates]
        raise BadInput(f"{machine!r} was trained in several datasets {names}; pick one with --dataset")
    return candidates[0]


def score_paths(run_dir: Path, machine: str, paths: list[Path], dataset: str | None = None,
                aggregate: str | None = None, device: str = "auto"
                ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score wav files (any names) or folders of them. Returns the table
    (file, section, score, threshold, decision) and the files skipped with the reason."""
    detector = load_detector(_model_path(Path(run_dir), machine, dataset))
    config = FeatureConfig(**detector.feature_config_)
    reducer = aggregate or detector.train_config_.get("aggregate", "mean")
    skipped: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="asd-score-") as tmp:
        writer = ShardWriter(Path(tmp) / "score.h5", config, {"dataset": "score", "machine": machine,
                                                             "split": "score", "source_root": "",
                                                             "source_digest": ""})
        for path in _wav_files(paths):
            try:
                clip = read_clip(str(path), config)
            except BadAudio as err:
                skipped.append((str(path), str(err)))
                continue
            try:  # a DCASE name tells the section; any other name uses the threshold pooled over sections
                section = parse_clip_name(path.name).section
            except UnparseableName:
                section = ALL_SECTIONS
            feats = segment_features(clip.samples, config)  # exactly data_prep's features
            writer.add_clips([{"rel_path": str(path), "file_name": path.name, "machine": machine,
                               "section": section, "domain": "unknown", "split": "score",
                               "label": "unknown", "attributes": "", "n_samples": len(clip.samples),
                               "original_sample_rate": clip.original_sample_rate,
                               "original_channels": clip.original_channels, "notes": "; ".join(clip.notes)}],
                             [feats])
        if writer.n_clips == 0:
            writer.abort()
            raise BadInput("no usable wav file among the given paths"
                                    + "".join(f"\n  {p}: {r}" for p, r in skipped))
        shard = Shard(writer.commit())
        scores = detector.score_clips(shard, None, reducer, device)
        clips = shard.clips.loc[scores.index]
        shard.close()
    table = pd.DataFrame({"file": clips["rel_path"].to_numpy(), "section": clips["section"].to_numpy(),
                          "score": scores.to_numpy()})
    table["threshold"] = [threshold_for(detector, s) for s in table["section"]]
    table["decision"] = (table["score"] > table["threshold"]).astype(int)
    return table, skipped
