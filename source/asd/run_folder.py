"""The one owner of a run folder (`output/<run>/`): every path in it, its configuration, its tables, and
where each model is. Other modules ask it for paths; none composes or searches one.

    output/<run>/
        config.json            the run configuration as the engine built it, plus what was used and done
        config.yaml            the options the run used (`--config` repeats it)
        thresholds.csv         per machine type x section (x domain; "*" pooled): threshold, where it was fitted,
                               out-of-fold score figures, expected false-alarm rate and its interval
        predictions.csv        one row per test clip: dataset, file, machine, section, domain, score, ...
        summary.txt            what the test stage printed
        report.html            the run on one page
        seeds.csv              with several seeds: the official score of each (their runs in seed_<s>/)
        scores_<machine>_<time>.csv                       written by `score`
        <dataset>/summary.csv, official_score.csv, shared_train.log
        <dataset>/submission/  the official files (anomaly_score_*.csv, decision_result_*.csv)
        <dataset>/evaluation/  evaluation-set figures (`evaluate`, `test --ground-truth`)
        <dataset>/<machine>/   model.pt, task.json, train.log, loss.png, result.csv, roc.png,
                               score_histogram.png, oof_scores.csv (the normal training clips' out-of-fold
                               scores, which the thresholds are fitted on)
        .asd-run.lock          who writes the folder now (see `RunLock`)

One writer at a time: a stage that writes the folder holds `RunLock` on it for as long as it runs, so a
second run into the same folder stops at once, naming the first. Every table is written through a
temporary name and renamed when complete (`asd.folders`), so a reader never sees half a file and a write
that fails leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asd.errors import MAIN_COMMAND, BadInput, BadState, MissingModel
from asd.folders import check_writable_dir, write_atomically
from asd.readback import damaged as readback_damaged
from asd.readback import read_json_object, read_table

if TYPE_CHECKING:
    import pandas as pd

RUNS_ROOT = Path("output")

# What the tables read back must hold (column: kind, see `asd.readback.KINDS`).
PREDICTION_COLUMNS = {"file_name": "name", "machine": "name", "section": "name", "domain": "name",
                      "score": "number", "threshold": "number?", "decision": "flag", "label": "name"}
THRESHOLD_COLUMNS = {"dataset": "name", "machine": "name", "section": "name", "domain": "name",
                     "threshold": "number", "percentile": "number", "n_normal_clips": "number",
                     "expected_false_alarm_rate": "number?", "false_alarm_low": "number?",
                     "false_alarm_high": "number?"}
THRESHOLD_OPTIONAL = {"model": "text", "method": "text", "fitted_on": "text", "note": "text", "oof_median": "number?",
                      "oof_p90": "number?", "n_held_out": "number?", "held_out_false_alarm_rate": "number?"}
SUMMARY_NUMBERS = ("n_clips", "n_normal", "n_anomaly", "AUC", "pAUC", "AUC (source)", "AUC (target)",
                   "pAUC (source)", "pAUC (target)", "precision", "recall", "F1 score", "precision (source)",
                   "precision (target)", "recall (source)", "recall (target)", "F1 score (source)",
                   "F1 score (target)")


def new_run_path(model: str, root: str | Path = RUNS_ROOT) -> Path:
    """`output/<date>-<time>_<model>` (with a suffix when taken: runs never overwrite each other)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}_{model}"
    suffix = 1
    while path.exists():
        path = Path(root) / f"{stamp}_{model}-{suffix}"
        suffix += 1
    return path


def evaluation_dir_for(submission_dir: str | Path) -> Path:
    """Where the evaluation-set figures of a folder of official files go: beside a run's `submission/`,
    inside any other folder."""
    submission_dir = Path(submission_dir)
    return submission_dir.parent / "evaluation" if submission_dir.name == "submission" else \
        submission_dir / "evaluation"


LOCK_NAME = ".asd-run.lock"


class RunLock:
    """An exclusive lock (`fcntl.flock`) on a run folder's lock file, held by this process until `release`
    or until the process ends in any way (the kernel drops the lock of a crashed or killed process, so a
    stale lock never blocks a later run). The file says who holds it: pid, host, command, start time."""

    def __init__(self, folder: str | Path, fd: int) -> None:
        self.folder = Path(folder)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: str | Path) -> RunLock:
        """Lock `folder` (which exists) for this process; BadState naming the holder when another has it."""
        path = Path(folder) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise BadState(f"cannot lock run folder {folder} ({path}: {err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd) if isinstance(err, BlockingIOError) else None
            os.close(fd)
            if holder is None and not isinstance(err, BlockingIOError):
                raise BadState(f"cannot lock run folder {folder} ({path}: {err.strerror or err})") from None
            raise BadState(f"run folder {folder} is in use by another run ({holder}); wait for it to end, or "
                           "choose another --output-dir") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
                  "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return cls(folder, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _holder(fd: int) -> str:
    """Who holds a lock, from its file (written right after the lock was taken)."""
    try:
        record = json.loads(os.pread(fd, 65536, 0) or b"{}")
        return (f"pid {record['pid']} on {record['host']}, started {record['started']}: "
                f"{record['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


class RunFolder:
    """One run folder. `RunFolder.create` makes (or reuses) one for writing; `RunFolder.existing` opens a
    finished one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, path: str | Path | None, model: str, option: str = "--output-dir") -> RunFolder:
        """The folder `path`, or a new `output/<time>_<model>/`, checked writable (BadInput otherwise)."""
        return cls(check_writable_dir(path if path is not None else new_run_path(model), option))

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """A folder the train stage made (BadState when it has no config.json)."""
        folder = cls(path)
        if not folder.config_json.is_file():
            raise BadState(f"{path} is not a run folder (no config.json); make one with `{MAIN_COMMAND} train`")
        return folder

    # --- paths -----------------------------------------------------------------------------------
    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    @property
    def config_yaml(self) -> Path:
        return self.path / "config.yaml"

    @property
    def thresholds_csv(self) -> Path:
        return self.path / "thresholds.csv"

    @property
    def predictions_csv(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def summary_txt(self) -> Path:
        return self.path / "summary.txt"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def seeds_csv(self) -> Path:
        return self.path / "seeds.csv"

    def scores_csv(self, machine: str, when: datetime | None = None) -> Path:
        return self.path / f"scores_{machine}_{(when or datetime.now()):%Y%m%d-%H%M%S}.csv"

    def seed_folder(self, seed: int) -> RunFolder:
        return RunFolder(self.path / f"seed_{seed}")

    def dataset_dir(self, dataset: str) -> Path:
        return self.path / dataset

    def summary_csv(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "summary.csv"

    def official_score_csv(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "official_score.csv"

    def submission_dir(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "submission"

    def shared_train_log(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "shared_train.log"

    def machine_dir(self, dataset: str, machine: str) -> Path:
        return self.dataset_dir(dataset) / machine

    def model_path(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "model.pt"

    def task_record(self, dataset: str, machine: str) -> Path:
        """`task.json`: the run configuration and threshold rows of a machine type whose model is saved."""
        return self.machine_dir(dataset, machine) / "task.json"

    def train_log(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "train.log"

    def loss_png(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "loss.png"

    def result_csv(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "result.csv"

    def roc_png(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "roc.png"

    def histogram_png(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "score_histogram.png"

    def oof_scores_csv(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "oof_scores.csv"

    def oof_png(self, dataset: str, machine: str) -> Path:
        return self.machine_dir(dataset, machine) / "oof_scores.png"

    # --- configuration ---------------------------------------------------------------------------
    def _retrain_fix(self) -> str:
        return (f"train again into a new folder (`{MAIN_COMMAND} train --config {self.config_yaml} --output-dir "
                "NEW`), or restore the file")

    def _test_fix(self) -> str:
        return f"`{MAIN_COMMAND} test --run {self.path}` writes it again"

    def read_config(self) -> dict[str, Any]:
        """config.json as written ({} when there is none); DamagedFile when it is not a run's record."""
        if not self.config_json.is_file():
            return {}
        record = read_json_object(self.config_json, "a run's config.json", self._retrain_fix())
        for key, kind in (("run", dict), ("trained", list), ("failed", dict), ("applies", list), ("used", dict)):
            if key in record and not isinstance(record[key], kind):
                raise readback_damaged(self.config_json, "a run's config.json",
                                       f"its {key!r} is a {type(record[key]).__name__}, not a {kind.__name__}",
                                       self._retrain_fix())
        return record

    def update_config(self, record: dict[str, Any]) -> None:
        """Merge `record` into config.json (created with the folder when missing)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.config_json, json.dumps({**self.read_config(), **record}, indent=2, default=str))

    def run_record(self) -> dict[str, Any]:
        """The run configuration in config.json (`asd.engine.config.RunConfig.to_dict`). A folder written
        before the configuration had its own record kept the fit settings under "train"; they are read
        into the same shape."""
        config = self.read_config()
        if "run" in config:
            if not isinstance(config["run"].get("fit", {}), dict):
                raise readback_damaged(self.config_json, "a run's config.json", "its run 'fit' is not an object",
                                       self._retrain_fix())
            return dict(config["run"])
        old = dict(config.get("train", {}))
        return {"model": config.get("model", "?"), "model_options": config.get("model_options", {}),
                "processed_dir": config.get("processed_dir", ""), "machines": config.get("machines", []),
                **{k: old.pop(k) for k in ("val_fraction", "threshold_method", "threshold_percentile") if k in old},
                "fit": old}

    def damaged_config(self, why: str) -> Exception:
        """The one-line error for a config.json whose run record is not one this version reads."""
        return readback_damaged(self.config_json, "a run's config.json", why, self._retrain_fix())

    def write_config_yaml(self, text: str) -> Path:
        return write_atomically(self.config_yaml, text)

    def lock(self) -> RunLock:
        """Hold the folder for this process's writes (`RunLock`); BadState when another run holds it."""
        return RunLock.acquire(self.path)

    # --- tables ----------------------------------------------------------------------------------
    def write_thresholds(self, rows: list[dict]) -> Path:
        import pandas as pd

        write_atomically(self.thresholds_csv, pd.DataFrame(rows).to_csv(index=False))
        return self.thresholds_csv

    def read_thresholds(self) -> pd.DataFrame | None:

        if not self.thresholds_csv.is_file():
            return None
        fix = (f"the same `{MAIN_COMMAND} train` command with --output-dir {self.path} writes it again (saved "
               "models are kept)")
        return read_table(self.thresholds_csv, "a thresholds table", fix, THRESHOLD_COLUMNS,
                          optional=THRESHOLD_OPTIONAL)

    def write_oof_scores(self, dataset: str, machine: str, scores: pd.DataFrame) -> Path:
        """The out-of-fold scores of a machine type's normal training clips (file_name, section, domain, score)."""
        path = self.oof_scores_csv(dataset, machine)
        write_atomically(path, scores.to_csv(index=False))
        return path

    def read_oof_scores(self, dataset: str, machine: str) -> pd.DataFrame | None:

        path = self.oof_scores_csv(dataset, machine)
        if not path.is_file():
            return None
        fix = (f"delete {path.parent} and rerun the same `{MAIN_COMMAND} train` command with --output-dir "
               f"{self.path}: that machine type is trained again")
        return read_table(path, "a table of out-of-fold scores", fix,
                          {"file_name": "name", "section": "name", "domain": "name", "score": "number"})

    def write_predictions(self, predictions: pd.DataFrame) -> Path:
        """predictions.csv: one row per test clip of every machine type, sorted by dataset, machine, section
        and file name; scores as the shortest text that reads back to the same number."""
        columns = ["dataset", "file_name", "machine", "section", "domain", "score", "threshold", "decision",
                   "label"]
        table = predictions[columns].assign(section=predictions["section"].astype(str))
        table = table.sort_values(["dataset", "machine", "section", "file_name"], kind="mergesort")
        write_atomically(self.predictions_csv, table.to_csv(index=False, lineterminator="\n"))
        return self.predictions_csv

    def read_predictions(self) -> pd.DataFrame:
        """predictions.csv, checked (DamagedFile naming it when it is not one); folders written before it
        had a `dataset` column read without one."""
        if not self.predictions_csv.is_file():
            raise BadState(f"{self.path} has no predictions.csv; `{MAIN_COMMAND} test --run {self.path}` "
                           "writes it")
        return read_table(self.predictions_csv, "a predictions table", self._test_fix(), PREDICTION_COLUMNS,
                          optional={"dataset": "name"})

    def read_summary(self, dataset: str) -> pd.DataFrame:
        """`<dataset>/summary.csv`: the metrics per machine type and section, checked."""
        return read_table(self.summary_csv(dataset), "a summary table", self._test_fix(),
                          {"machine": "name", "section": "name"},
                          optional={column: "number?" for column in SUMMARY_NUMBERS})

    def read_official_scores(self, dataset: str) -> pd.DataFrame:
        """`<dataset>/official_score.csv` (metric, value): every value but the rules' name a number."""
        path = self.official_score_csv(dataset)
        table = read_table(path, "an official-score table", self._test_fix(), {"metric": "name", "value": "name"})
        numbers = table[table["metric"] != "rules"]
        for row, value in zip(numbers.index, numbers["value"], strict=True):
            try:
                float(value)
            except ValueError:
                raise readback_damaged(path, "an official-score table", f"row {row + 2}: {value!r} is not a number",
                                       self._test_fix()) from None
        return table

    def write_summary_text(self, text: str) -> Path:
        return write_atomically(self.summary_txt, text + "\n")

    def append_summary_text(self, text: str) -> None:
        """Add lines to summary.txt when the test stage wrote one (the whole file rewritten atomically)."""
        if self.summary_txt.is_file():
            write_atomically(self.summary_txt, self.summary_txt.read_text() + "\n" + text + "\n")

    def read_task(self, dataset: str, machine: str) -> dict[str, Any] | None:
        """task.json of a machine type whose model is saved (None otherwise), checked."""
        path = self.task_record(dataset, machine)
        if not (path.is_file() and self.model_path(dataset, machine).is_file()):
            return None
        fix = (f"delete it and rerun the same `{MAIN_COMMAND} train` command with --output-dir {self.path}: "
               "that machine type is trained again")
        record = read_json_object(path, "a machine type's task record", fix, required=("config", "thresholds"))
        if not isinstance(record["thresholds"], list) or not all(isinstance(r, dict) for r in record["thresholds"]):
            raise readback_damaged(path, "a machine type's task record", "its thresholds are not a list of rows", fix)
        return record

    def write_task(self, dataset: str, machine: str, record: dict[str, Any]) -> None:
        write_atomically(self.task_record(dataset, machine), json.dumps(record, default=str))

    # --- what is in it ---------------------------------------------------------------------------
    def trained(self) -> list[tuple[str, str]]:
        """(dataset, machine) of every machine type the run trained, from config.json."""
        return [tuple(key.rsplit("/", 1)) for key in self.read_config().get("trained", [])]

    def datasets(self) -> list[str]:
        """Datasets the test stage wrote results for (the `dataset` column of predictions.csv; in folders
        written before predictions.csv had it, the datasets of the trained machine types)."""
        found: set[str] = set()
        if self.predictions_csv.is_file():
            predictions = self.read_predictions()
            if "dataset" in predictions:
                found = set(predictions["dataset"])
        if not found:
            found = {dataset for dataset, _ in self.trained()}
        return sorted(d for d in found if self.summary_csv(d).is_file())

    def submission_dirs(self) -> list[Path]:
        return [self.submission_dir(d) for d in self.datasets() if self.submission_dir(d).is_dir()]

    def find_model(self, machine: str, dataset: str | None = None) -> Path:
        """The model.pt of a machine type (MissingModel when the run has none; BadInput when several
        datasets have one and `dataset` does not choose)."""
        datasets = [d for d, m in self.trained() if m == machine and self.model_path(d, m).is_file()]
        if dataset is not None:
            datasets = [d for d in datasets if d == dataset]
        if not datasets:
            raise MissingModel(f"no trained model for machine type {machine!r} in {self.path}")
        if len(datasets) > 1:
            raise BadInput(f"{machine!r} was trained in several datasets {datasets}; pick one with --dataset")
        return self.model_path(datasets[0], machine)

    def remove_partial_files(self, dataset: str, machine: str) -> list[Path]:
        """Remove the temporary `.<name>.partial` files a killed run left in a machine type's folder."""
        folder = self.machine_dir(dataset, machine)
        removed = []
        if folder.is_dir():
            for path in folder.glob(".*.partial"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed
