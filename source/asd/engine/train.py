"""The train and test stages, per machine type; they talk only through files in the run folder.

    output/<run>/
        config.json, thresholds.csv, predictions.csv, summary.txt
        <dataset>/summary.csv, official_score.csv
        <dataset>/submission/anomaly_score_<machine>_section_<SS>_test.csv, decision_result_...csv
        <dataset>/<machine>/model.pt, train.log, loss.png, result.csv, roc.png, score_histogram.png
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from asd.cache.reading import split_train_validation
from asd.cache.shard import Shard, find_shards
from asd.dataset.layout import rules_for_files
from asd.errors import BadState
from asd.evaluation.thresholds import false_alarm_rate, fit_threshold
from asd.models.base import Detector, TrainConfig, load_detector
from asd.models.registry import make_detector

ALL_SECTIONS = "*"  # the threshold pooled over all sections: for clips whose section was never trained


@dataclass(frozen=True)
class MachineData:
    """The shards of one machine type of one dataset."""

    dataset: str
    machine: str
    train: Path | None
    tests: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.machine}"


def discover(processed_dir: Path, machines: list[str] | None = None) -> list[MachineData]:
    """Every machine type with shards below `processed_dir`, grouped by dataset."""
    processed_dir = Path(processed_dir)
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for path in find_shards(processed_dir, machines):
        dataset = path.parent.parent.relative_to(processed_dir).as_posix()
        if dataset == ".":  # pointed straight at one dataset's folder: use its name
            dataset = processed_dir.resolve().name
        groups.setdefault((dataset, path.parent.name), {})[path.stem] = path
    found = []
    for (dataset, machine), shards in sorted(groups.items()):
        tests = tuple(p for split, p in sorted(shards.items()) if split != "train")
        found.append(MachineData(dataset, machine, shards.get("train"), tests))
    return found


def machine_dir(run_dir: Path, item: MachineData) -> Path:
    return Path(run_dir) / item.dataset / item.machine


def fit_thresholds(detector: Detector, shard: Shard, val_clips: np.ndarray, train_clips: np.ndarray,
                   train: TrainConfig) -> list[dict]:
    """Per-section thresholds (plus one pooled over sections) from held-out normal clip scores."""
    source_clips, source = (val_clips, "held-out normal clips") if len(val_clips) else \
        (train_clips, "training clips (no clips held out: --val-fraction 0)")
    scores = detector.score_clips(shard, source_clips, train.aggregate, train.device)
    sections = shard.clips["section"].to_numpy()[scores.index.to_numpy()]
    rows = []
    for section in [*sorted(set(sections)), ALL_SECTIONS]:
        normal = scores.to_numpy() if section == ALL_SECTIONS else scores.to_numpy()[sections == section]
        fit = fit_threshold(normal, method=train.threshold_method, percentile=train.threshold_percentile)
        detector.thresholds_[section] = fit.to_dict()
        rows.append({"section": section, "threshold": fit.value, "method": fit.method,
                     "percentile": fit.percentile, "n_normal_clips": fit.n_scores, "fitted_on": source,
                     "false_alarm_rate": cross_fitted_false_alarm_rate(normal, train, train.seed),
                     "note": fit.note})
    return rows


def cross_fitted_false_alarm_rate(normal: np.ndarray, train: TrainConfig, seed: int) -> float:
    """False-alarm rate of the threshold rule on normal clips it was not fitted on: fit on one half of the
    held-out normal scores, count alarms on the other half, and the other way round (NaN below 4 clips).

    Measuring on the clips the threshold was fitted on would return about 100 - percentile by construction.
    """
    if len(normal) < 4:
        return float("nan")
    order = np.random.default_rng(seed).permutation(len(normal))
    halves = (normal[order[: len(normal) // 2]], normal[order[len(normal) // 2:]])
    rates = []
    for fit_on, check_on in (halves, halves[::-1]):
        fit = fit_threshold(fit_on, method=train.threshold_method, percentile=train.threshold_percentile)
        rates.append(false_alarm_rate(check_on, fit.value))
    return float(np.mean(rates))


def normal_split(shard: Shard, train: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and held-out clips of a training shard (never an anomaly: training data is normal)."""
    clips = shard.clips
    return split_train_validation(clips[clips["label"] != "anomaly"], train.val_fraction, train.seed)


def fit_shared(items: list[MachineData], run_dir: Path, model: str, train: TrainConfig,
               model_options: dict | None = None) -> dict[str, object]:
    """Networks that models with ``scope="dataset"`` (embed) learn once from every machine type of a
    dataset trained together, keyed by dataset (empty for every other model). Each machine type's own
    split is used, so its held-out clips stay unseen. Written to ``<run>/<dataset>/shared_train.log``."""
    detector = make_detector(model, **(model_options or {}))
    if not hasattr(detector, "fit_shared") or getattr(detector.config, "scope", "machine") != "dataset":
        return {}
    shared: dict[str, object] = {}
    for dataset in sorted({item.dataset for item in items}):
        group = [item for item in items if item.dataset == dataset and item.train is not None]
        if len(group) < 2:  # one machine type trains its own network in `fit`, which is the same thing
            continue
        shards = [Shard(item.train) for item in group]
        parts = [(item.machine, shard, *normal_split(shard, train)) for item, shard in zip(group, shards, strict=True)]
        (Path(run_dir) / dataset).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / dataset / "shared_train.log", "w") as log_file:
            def log(line: str) -> None:
                log_file.write(line + "\n")
                log_file.flush()

            log(f"{dataset}: model {model}, one network for {', '.join(item.machine for item in group)}")
            shared[dataset] = detector.fit_shared(parts, train, log)
        for shard in shards:
            shard.close()
    return shared


def train_machine(item: MachineData, run_dir: Path, model: str, train: TrainConfig,
                  model_options: dict | None = None, shared: object | None = None) -> list[dict]:
    """Fit a detector on the machine's training shard; save it with its thresholds; return threshold rows.
    `model_options` override fields of the model's config (e.g. the ensemble's `members`); `shared` is
    what `fit_shared` trained for the machine's dataset, if anything."""
    if item.train is None:
        raise BadState(f"{item.key}: no train.h5 shard; run data_prep on its train/ folder")
    out = machine_dir(run_dir, item)
    out.mkdir(parents=True, exist_ok=True)
    shard = Shard(item.train)
    train_clips, val_clips = normal_split(shard, train)
    detector = make_detector(model, **(model_options or {}))
    if shared is not None:
        detector.shared_ = shared
    start = time.perf_counter()
    with open(out / "train.log", "w") as log_file:
        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()

        log(f"{item.key}: model {model}, {len(train_clips)} training clips, {len(val_clips)} held out")
        detector.fit(shard, train_clips, val_clips, train, log=log)
        rows = fit_thresholds(detector, shard, val_clips, train_clips, train)
        log(f"fitted in {time.perf_counter() - start:.1f} s; thresholds: "
            + ", ".join(f"{r['section']}={r['threshold']:.5g}" for r in rows))
    detector.save(out / "model.pt")
    if detector.history_:
        from asd.reports.plots import plot_loss_curve

        plot_loss_curve(detector.history_, out / "loss.png", title=f"{item.key} ({model})")
    shard.close()
    return [{"dataset": item.dataset, "machine": item.machine, "model": model, **r} for r in rows]


def threshold_for(detector: Detector, section: str) -> float:
    fit = detector.thresholds_.get(section) or detector.thresholds_[ALL_SECTIONS]
    return float(fit["value"])


def test_machine(item: MachineData, run_dir: Path, train: TrainConfig) -> tuple[pd.DataFrame, str]:
    """Score every test clip of a machine with its saved model; returns predictions and the rules."""
    detector = load_detector(machine_dir(run_dir, item) / "model.pt")
    frames, split_folders = [], []
    for path in item.tests:
        shard = Shard(path)
        split_folders.append(path.stem)
        scores = detector.score_clips(shard, None, train.aggregate, train.device)
        clips = shard.clips.loc[scores.index]
        frames.append(pd.DataFrame({
            "file_name": clips["file_name"].to_numpy(), "machine": item.machine,
            "section": clips["section"].to_numpy(), "domain": clips["domain"].to_numpy(),
            "label": clips["label"].to_numpy(), "score": scores.to_numpy(),
        }))
        shard.close()
    predictions = pd.concat(frames, ignore_index=True)
    predictions["threshold"] = [threshold_for(detector, s) for s in predictions["section"]]
    predictions["decision"] = (predictions["score"] > predictions["threshold"]).astype(int)
    predictions.insert(0, "dataset", item.dataset)
    return predictions, rules_for_files(predictions["file_name"].tolist(), split_folders)


def write_machine_outputs(item: MachineData, run_dir: Path, predictions: pd.DataFrame, rules: str) -> None:
    """Official submission files, result.csv and plots of one machine type."""
    from asd.evaluation.metrics import is_measurable
    from asd.evaluation.submission import write_machine_result, write_submission_files
    from asd.reports.plots import plot_roc, plot_score_histograms

    out = machine_dir(run_dir, item)
    write_submission_files(predictions, Path(run_dir) / item.dataset / "submission", rules)
    if is_measurable(predictions):
        write_machine_result(predictions, out / "result.csv", rules)
        plot_roc(predictions, out / "roc.png", title=f"{item.key}")
    plot_score_histograms(predictions, out / "score_histogram.png")


def write_config(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.update(record)
    path.write_text(json.dumps(existing, indent=2, default=str))


def train_config_record(train: TrainConfig, model: str, processed_dir: Path,
                        model_options: dict | None = None) -> dict:
    return {"model": model, "model_options": dict(model_options or {}), "processed_dir": str(processed_dir),
            "train": asdict(train)}
