"""Training one machine type: the model fitted on its normal clips, thresholds fitted on their out-of-fold
scores (calibrated by the model), the checkpoint saved. Paths come from the run folder.

Models that learn one network for all machine types of a dataset (`embed` with `scope="dataset"`) get it
from `fit_shared`, trained once per dataset before the machine types.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from asd.cache.reading import split_train_validation
from asd.cache.shard import Shard
from asd.cache.store import MachineData, discover
from asd.engine.config import RunConfig
from asd.errors import PREP_COMMAND, BadInput, BadState
from asd.evaluation.thresholds import fit_threshold_table
from asd.models.base import ALL_SECTIONS, Detector, threshold_key
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
    """The training clips of a training shard and those held out of everything (`--val-fraction`, by clip,
    stratified by section x domain; none by default): never an anomaly, training data is normal."""
    clips = shard.clips
    return split_train_validation(clips[clips["label"] != "anomaly"], config.val_fraction, config.fit.seed)


def fit_thresholds(detector: Detector, config: RunConfig) -> list[dict]:
    """Thresholds per section, per section x domain and pooled (`"*"`), from the detector's out-of-fold
    scores of its normal training clips (`decision_scores_`); stored on the detector, returned as rows."""
    scores = detector.decision_scores_
    rows = fit_threshold_table(scores["score"].to_numpy(), scores["section"].to_numpy(),
                               scores["domain"].to_numpy(), config.threshold_method, config.threshold_percentile,
                               seed=config.fit.seed)
    detector.thresholds_ = {threshold_key(r["section"], r["domain"]): r.pop("fit") for r in rows}
    return rows


def held_out_check(detector: Detector, shard: Shard, held_out: np.ndarray, rows: list[dict],
                   config: RunConfig) -> None:
    """With `--val-fraction`: the false-alarm rate of the thresholds on normal clips held out of
    everything (fitting, calibration, thresholds), added to each threshold row it applies to."""
    if not len(held_out):
        return
    scores = detector.score_clips(shard, held_out, config.fit.device)
    table = shard.clips.loc[scores.index]
    sections, domains = table["section"].to_numpy().astype(str), table["domain"].to_numpy().astype(str)
    _, decided = detector.decisions(scores.to_numpy(), sections, domains)
    for row in rows:
        mine = np.ones(len(decided), bool)
        if row["section"] != ALL_SECTIONS:
            mine &= sections == row["section"]
        if row["domain"] != ALL_SECTIONS:
            mine &= np.where(domains == "target", "target", "source") == row["domain"]
        row["n_held_out"] = int(mine.sum())
        row["held_out_false_alarm_rate"] = float(decided[mine].mean()) if mine.any() else float("nan")


def shared_groups(machines: list[MachineData], config: RunConfig) -> dict[str, list[MachineData]]:
    """The machine types whose model learns from their whole dataset at once, by dataset (empty for every
    model that learns per machine type). A dataset with one machine type trains it in `fit`, which is the
    same thing."""
    detector = config.make_detector()
    if not detector.learns_per_dataset():
        return {}
    groups: dict[str, list[MachineData]] = {}
    for machine in machines:
        if machine.train is not None:
            groups.setdefault(machine.dataset, []).append(machine)
    smallest = 1 if config.aux_processed_dirs else 2  # auxiliary classes make one machine type a group too
    return {dataset: group for dataset, group in sorted(groups.items())
            if len(group) >= smallest and detector.learns_per_dataset(_largest_training_set(group, config))}


def _largest_training_set(group: list[MachineData], config: RunConfig) -> int:
    """The most training clips any machine type of `group` has (what `fit_shared` would give it)."""
    largest = 0
    for machine in group:
        shard = Shard(machine.train)
        largest = max(largest, len(normal_split(shard, config)[0]))
        shard.close()
    return largest


def auxiliary_machines(config: RunConfig) -> list[MachineData]:
    """The machine types with training shards under `--aux-processed-dir` folders; BadInput names a folder
    that has none (checked before any work starts)."""
    found = []
    for folder in config.aux_processed_dirs:
        machines = [m for m in discover(folder) if m.train is not None]
        if not machines:
            raise BadInput(f"--aux-processed-dir {folder}: no train.h5 shard under it; prepare it with "
                           f"`{PREP_COMMAND} --out-dir {folder}`")
        found += machines
    return found


def _normal_clips(shard: Shard) -> np.ndarray:
    return shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()


def fit_shared(dataset: str, group: list[MachineData], config: RunConfig, folder: RunFolder) -> object:
    """What the model learns once from every machine type of `group` (one dataset), from each machine type's
    training clips (clips held out with `--val-fraction` stay unseen). Logged to
    `<run>/<dataset>/shared_train.log`."""
    detector = config.make_detector()
    shards = [Shard(machine.train) for machine in group]
    parts = [(machine.machine, shard, normal_split(shard, config)[0])
             for machine, shard in zip(group, shards, strict=True)]
    auxiliary = [(f"aux:{m.dataset}/{m.machine}", Shard(m.train)) for m in auxiliary_machines(config)]
    aux_parts = [(name, shard, _normal_clips(shard)) for name, shard in auxiliary]
    with _log_file(folder.shared_train_log(dataset)) as log:
        log(f"{dataset}: model {config.model}, one network for {', '.join(m.machine for m in group)}"
            + (f"; auxiliary classes from {', '.join(name for name, _ in auxiliary)}" if auxiliary else ""))
        shared = detector.fit_shared(parts, config.fit, log, aux_parts=aux_parts)
    for shard in [*shards, *(shard for _, shard in auxiliary)]:
        shard.close()
    return shared


def fit_machine(machine: MachineData, config: RunConfig, log: Callable[[str], None] = print,
                shared: object | None = None) -> tuple[Detector, list[dict]]:
    """A detector fitted on the machine type's normal training clips, with its thresholds fitted on their
    out-of-fold scores; and the threshold rows. `shared` is what `fit_shared` learned for its dataset, if
    anything."""
    if machine.train is None:
        raise BadState(f"{machine.key}: no train.h5 shard (no training clips); put normal clips in "
                       f"{machine.machine}/train/ and rerun `{PREP_COMMAND}`")
    shard = Shard(machine.train)
    train_clips, held_out = normal_split(shard, config)
    detector = config.make_detector()
    if shared is not None:
        detector.shared_ = shared
    start = time.perf_counter()
    log(f"{machine.key}: model {config.model}, {len(train_clips)} training clips"
        + (f", {len(held_out)} held out of everything" if len(held_out) else ""))
    detector.fit(shard, train_clips, config.fit, log=log)
    rows = fit_thresholds(detector, config)
    held_out_check(detector, shard, held_out, rows, config)
    log(f"fitted in {time.perf_counter() - start:.1f} s; thresholds: "
        + ", ".join(f"{threshold_key(r['section'], r['domain'])}={r['threshold']:.5g}" for r in rows))
    shard.close()
    return detector, [{"dataset": machine.dataset, "machine": machine.machine, "model": config.model, **r}
                      for r in rows]


def save_model(detector: Detector, machine: MachineData, config: RunConfig, folder: RunFolder) -> None:
    """Save the machine type's model; a save that fails leaves no temporary file, and when the file could
    not be written (a full disk, a size limit: torch reports these as a C++ RuntimeError) it becomes
    BadState, so this machine type fails with one line and the others go on."""
    path = folder.model_path(machine.dataset, machine.machine)
    try:
        save_detector(detector, path, config.to_dict())
    except BaseException as err:
        folder.remove_partial_files(machine.dataset, machine.machine)
        reason = _write_failure(err, path.parent)
        if reason is None:
            raise
        raise BadState(f"model not saved: cannot write {path} ({reason}); free some space or choose another "
                       "--output-dir, then rerun") from None


def _write_failure(err: BaseException, folder: Path) -> str | None:
    """Why writing a file failed, when `err` says it did (None: any other error, which is a bug)."""
    if isinstance(err, OSError):
        reason = err.strerror or str(err)
        return reason[:1].lower() + reason[1:]  # "no space left on device", as the torch branch below says
    # torch's writer (caffe2 inline_container) reports a failed write as "unexpected pos ..." or
    # "PytorchStreamWriter failed writing file ...", without the system's reason
    text = str(err)
    if isinstance(err, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        try:
            full = os.statvfs(folder).f_bavail == 0
        except OSError:
            full = False
        return "no space left on device" if full else f"the write failed: {text.splitlines()[0]}"
    return None


def train_machine(machine: MachineData, config: RunConfig, folder: RunFolder, shared: object | None = None
                  ) -> list[dict]:
    """`fit_machine` into the run folder: train.log, model.pt (with the run configuration) and loss.png;
    returns the threshold rows."""
    with _log_file(folder.train_log(machine.dataset, machine.machine)) as log:
        detector, rows = fit_machine(machine, config, log, shared)
    save_model(detector, machine, config, folder)
    folder.write_oof_scores(machine.dataset, machine.machine, detector.decision_scores_)
    from asd.reports.plots import plot_loss_curve, plot_out_of_fold_histograms

    plot_out_of_fold_histograms(detector.decision_scores_, pd.DataFrame(rows),
                                folder.oof_png(machine.dataset, machine.machine),
                                title=f"{machine.key} ({config.model}): out-of-fold scores of normal clips")
    if detector.history_:

        plot_loss_curve(detector.history_, folder.loss_png(machine.dataset, machine.machine),
                        title=f"{machine.key} ({config.model})")
    return rows
