"""Training one machine type: its normal clips split by clip, the model fitted, thresholds fitted on the
scores of held-out normal clips, the checkpoint saved. Paths come from the run folder.

Models that learn one network for all machine types of a dataset (`embed` with `scope="dataset"`) get it
from `fit_shared`, trained once per dataset before the machine types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from asd.cache.reading import split_train_validation
from asd.cache.shard import Shard
from asd.cache.store import MachineData
from asd.engine.config import RunConfig
from asd.errors import PREP_COMMAND, BadState
from asd.evaluation.thresholds import cross_fitted_false_alarm_rate, fit_threshold
from asd.models.base import ALL_SECTIONS, Detector
from asd.models.checkpoint import save_detector
from asd.run_folder import RunFolder


@contextmanager
def _log_file(path: Path) -> Iterator[Callable[[str], None]]:
    """A `log(line)` that writes each line to `path` as it comes (a killed run keeps what was logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        def log(line: str) -> None:
            file.write(line + "\n")
            file.flush()

        yield log


def normal_split(shard: Shard, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and held-out clips of a training shard (never an anomaly: training data is normal)."""
    clips = shard.clips
    return split_train_validation(clips[clips["label"] != "anomaly"], config.val_fraction, config.fit.seed)


def fit_thresholds(detector: Detector, shard: Shard, val_clips: np.ndarray, train_clips: np.ndarray,
                   config: RunConfig) -> list[dict]:
    """Per-section thresholds (plus one pooled over sections) from held-out normal clip scores."""
    source_clips, source = (val_clips, "held-out normal clips") if len(val_clips) else \
        (train_clips, "training clips (no clips held out: --val-fraction 0)")
    scores = detector.score_clips(shard, source_clips, config.fit.aggregate, config.fit.device)
    sections = shard.clips["section"].to_numpy()[scores.index.to_numpy()]
    rows = []
    for section in [*sorted(set(sections)), ALL_SECTIONS]:
        normal = scores.to_numpy() if section == ALL_SECTIONS else scores.to_numpy()[sections == section]
        fit = fit_threshold(normal, method=config.threshold_method, percentile=config.threshold_percentile)
        detector.thresholds_[section] = fit.to_dict()
        rows.append({"section": section, "threshold": fit.value, "method": fit.method,
                     "percentile": fit.percentile, "n_normal_clips": fit.n_scores, "fitted_on": source,
                     "false_alarm_rate": cross_fitted_false_alarm_rate(
                         normal, config.threshold_method, config.threshold_percentile, config.fit.seed),
                     "note": fit.note})
    return rows


def shared_groups(machines: list[MachineData], config: RunConfig) -> dict[str, list[MachineData]]:
    """The machine types whose model learns from their whole dataset at once, by dataset (empty for every
    model that learns per machine type). A dataset with one machine type trains it in `fit`, which is the
    same thing."""
    detector = config.make_detector()
    if not hasattr(detector, "fit_shared") or getattr(detector.config, "scope", "machine") != "dataset":
        return {}
    groups: dict[str, list[MachineData]] = {}
    for machine in machines:
        if machine.train is not None:
            groups.setdefault(machine.dataset, []).append(machine)
    return {dataset: group for dataset, group in sorted(groups.items()) if len(group) >= 2}


def fit_shared(dataset: str, group: list[MachineData], config: RunConfig, folder: RunFolder) -> object:
    """What the model learns once from every machine type of `group` (one dataset). Each machine type's own
    split is used, so its held-out clips stay unseen. Logged to `<run>/<dataset>/shared_train.log`."""
    detector = config.make_detector()
    shards = [Shard(machine.train) for machine in group]
    parts = [(machine.machine, shard, *normal_split(shard, config))
             for machine, shard in zip(group, shards, strict=True)]
    with _log_file(folder.shared_train_log(dataset)) as log:
        log(f"{dataset}: model {config.model}, one network for {', '.join(m.machine for m in group)}")
        shared = detector.fit_shared(parts, config.fit, log)
    for shard in shards:
        shard.close()
    return shared


def fit_machine(machine: MachineData, config: RunConfig, log: Callable[[str], None] = print,
                shared: object | None = None) -> tuple[Detector, list[dict]]:
    """A detector fitted on the machine type's normal training clips, with its thresholds fitted on the
    held-out ones; and the threshold rows. `shared` is what `fit_shared` learned for its dataset, if
    anything."""
    if machine.train is None:
        raise BadState(f"{machine.key}: no train.h5 shard (no training clips); put normal clips in "
                       f"{machine.machine}/train/ and rerun `{PREP_COMMAND}`")
    shard = Shard(machine.train)
    train_clips, val_clips = normal_split(shard, config)
    detector = config.make_detector()
    if shared is not None:
        detector.shared_ = shared
    start = time.perf_counter()
    log(f"{machine.key}: model {config.model}, {len(train_clips)} training clips, {len(val_clips)} held out")
    detector.fit(shard, train_clips, val_clips, config.fit, log=log)
    rows = fit_thresholds(detector, shard, val_clips, train_clips, config)
    log(f"fitted in {time.perf_counter() - start:.1f} s; thresholds: "
        + ", ".join(f"{r['section']}={r['threshold']:.5g}" for r in rows))
    shard.close()
    return detector, [{"dataset": machine.dataset, "machine": machine.machine, "model": config.model, **r}
                      for r in rows]


def train_machine(machine: MachineData, config: RunConfig, folder: RunFolder, shared: object | None = None
                  ) -> list[dict]:
    """`fit_machine` into the run folder: train.log, model.pt (with the run configuration) and loss.png;
    returns the threshold rows."""
    with _log_file(folder.train_log(machine.dataset, machine.machine)) as log:
        detector, rows = fit_machine(machine, config, log, shared)
    save_detector(detector, folder.model_path(machine.dataset, machine.machine), config.to_dict())
    if detector.history_:
        from asd.reports.plots import plot_loss_curve

        plot_loss_curve(detector.history_, folder.loss_png(machine.dataset, machine.machine),
                        title=f"{machine.key} ({config.model})")
    return rows
