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
from asd.dataset.layout import NOT_AUDIO, UnparseableName, parse_clip_name, unusable_path
from asd.errors import BadInput
from asd.models.base import ALL_SECTIONS, Detector
from asd.walk import is_audio_name, walk


def audio_files(paths: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to score: every file named (whatever its extension: the decoder decides), and below every
    folder named, every file with an audio extension (`asd.walk.AUDIO_SUFFIXES`, any case; links to
    folders followed). Also every other file and unread folder below those folders, with the reason."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        tree = walk(path)
        skipped += [(str(folder), reason) for folder, reason in tree.unread]
        for file in tree.files:
            problem = unusable_path(file) or (None if is_audio_name(file.name) else NOT_AUDIO)
            if problem is None:
                files.append(file)
            else:
                skipped.append((str(file), problem))
    return files, skipped


def check_aggregate(detector: Detector, aggregate: str | None) -> None:
    """`--aggregate` may only name the model's own reducer: its thresholds were fitted on clip scores made
    with it, so another reducer would compare scores and thresholds of different kinds (BadInput)."""
    if aggregate is not None and aggregate != detector.reducer:
        raise BadInput(f"--aggregate {aggregate}: this model's thresholds were fitted on clip scores reduced "
                       f"with {detector.reducer!r}, so its decisions hold only for those; leave --aggregate out, "
                       f"or train a model with --aggregate {aggregate}")


def score_paths(detector: Detector, machine: str, paths: list[Path], device: str = "auto"
                ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score wav files (any names) or folders of them with a fitted detector of a machine type. Returns
    the table (file, section, score, threshold, decision) and the files skipped with the reason."""
    config = FeatureConfig(**detector.feature_config_)
    files, skipped = audio_files(paths)
    # Every HDF5 file is closed before the temporary folder goes (on success and on any failure, a full
    # temporary disk included): a file still open when its folder is deleted crashes the library at exit.
    with tempfile.TemporaryDirectory(prefix="asd-score-") as tmp, \
            ShardWriter(Path(tmp) / "score.h5", config, {"dataset": "score", "machine": machine, "split": "score",
                                                        "source_root": "", "source_digest": ""}) as writer:
        for path in files:
            try:
                clip = read_clip(str(path), config)
            except BadAudio as err:
                skipped.append((str(path), str(err)))
                continue
            try:  # a DCASE name tells the section (and domain); any other name uses the pooled threshold
                parsed = parse_clip_name(path.name)
                section, domain = parsed.section, parsed.domain
            except UnparseableName:
                section, domain = ALL_SECTIONS, "unknown"
            feats = segment_features(clip.samples, config)  # exactly data_prep's features
            writer.add_clips([{"rel_path": str(path), "file_name": path.name, "machine": machine,
                               "section": section, "domain": domain, "split": "score",
                               "label": "unknown", "attributes": "", "n_samples": len(clip.samples),
                               "original_sample_rate": clip.original_sample_rate,
                               "original_channels": clip.original_channels, "notes": "; ".join(clip.notes)}],
                             [feats])
        if writer.n_clips == 0:
            raise BadInput("no usable audio file among the given paths"
                           + "".join(f"\n  {p}: {r}" for p, r in skipped))
        shard = Shard(writer.commit())
        try:
            scores = detector.score_clips(shard, device=device)
            clips = shard.clips.loc[scores.index]
        finally:
            shard.close()
    table = pd.DataFrame({"file": clips["rel_path"].to_numpy(), "section": clips["section"].to_numpy(),
                          "domain": clips["domain"].to_numpy(), "score": scores.to_numpy()})
    table["threshold"], table["decision"] = detector.decisions(table["score"].to_numpy(), table["section"].to_numpy(),
                                                               table["domain"].to_numpy())
    return table, skipped
