"""Official DCASE Task 2 submission files, result tables and the read-back used to check them.

Submission files have no header and one ``file_name,value`` row per test clip, sorted by file name
(the evaluators sort rows before aligning them with the ground truth):

* dcase2022 rules (2022-2026): ``anomaly_score_<machine>_section_<SS>_test.csv`` and
  ``decision_result_<machine>_section_<SS>_test.csv``;
* dcase2021 rules: one pair per domain, ``..._section_<SS>_source_test.csv`` / ``..._target_test.csv``;
* dcase2020 rules: ``anomaly_score_<machine>_id_<NN>.csv`` (and ``decision_result_<machine>_id_<NN>.csv``,
  which the 2020 evaluator did not read).

Scores are written with ``repr(float)``, the shortest text that reads back to the same double, so metrics
recomputed from the files equal those in ``result.csv`` exactly.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from asd.dataset.layout import UnparseableName, parse_clip_name
from asd.errors import BadInput, DamagedFile
from asd.evaluation.metrics import DOMAINS, check_rules, dataset_score, machine_results, metrics_table
from asd.folders import atomic_file
from asd.readback import parse_flag, read_text

PREDICTION_COLUMNS = ("file_name", "machine", "section", "domain", "label", "score", "threshold", "decision")

# Names of score files under each rule set; the machine part may itself contain underscores.
_SCORE_FILE_PATTERNS = {
    "dcase2022": re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$"),
    "dcase2021": re.compile(
        r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_(?P<domain>source|target)_test\.csv$"),
    "dcase2020": re.compile(r"^anomaly_score_(?P<machine>.+)_id_(?P<section>\d+)\.csv$"),
}


def _require(df: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"predictions frame lacks column(s) {missing}")


def _fmt(value: float | int) -> str:
    """Round-trip text of a number (``repr`` of the double; 'nan' / 'inf' as Python writes them)."""
    return repr(float(value))


def _write_rows(path: Path, rows: Iterable[Sequence[object]]) -> Path:
    """A CSV written whole or not at all (`asd.folders.atomic_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


def submission_file_names(
    machine: str, section: str, rules: str, domain: str | None = None
) -> tuple[str, str]:
    """(anomaly score file name, decision result file name) for one machine x section (x domain in 2021)."""
    check_rules(rules)
    if rules == "dcase2020":
        stem = f"{machine}_id_{section}"
    elif rules == "dcase2021":
        if domain not in DOMAINS:
            raise ValueError(f"dcase2021 files are per domain; got domain {domain!r}")
        stem = f"{machine}_section_{section}_{domain}_test"
    else:
        stem = f"{machine}_section_{section}_test"
    return f"anomaly_score_{stem}.csv", f"decision_result_{stem}.csv"


def _check_decisions(decisions: pd.Series, where: str) -> np.ndarray:
    values = decisions.to_numpy()
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"decisions must be 0 or 1 ({where})")
    return values.astype(np.int64)


def write_submission_files(predictions: pd.DataFrame, out_dir: str | Path, rules: str) -> list[Path]:
    """Write the official anomaly-score and decision-result CSVs, one pair per machine x section.

    Returns the written paths (score file, then decision file, for each group in sorted order).
    Raises ValueError on duplicate file names within a file, decisions other than 0/1, or (2021 rules)
    clips whose domain is unknown.
    """
    check_rules(rules)
    _require(predictions, ("file_name", "machine", "section", "domain", "score", "decision"))
    out = Path(out_dir)
    pred = predictions.assign(machine=predictions["machine"].astype(str),
                              section=predictions["section"].astype(str))
    keys = ["machine", "section"]
    if rules == "dcase2021":
        unknown = ~pred["domain"].isin(DOMAINS)
        if unknown.any():
            raise ValueError(f"dcase2021 submissions are per domain, but {int(unknown.sum())} clip(s) "
                             "have an unknown domain")
        keys.append("domain")
    written: list[Path] = []
    for group, part in pred.groupby(keys, sort=True):
        machine, section = group[0], group[1]
        domain = group[2] if rules == "dcase2021" else None
        part = part.sort_values("file_name", kind="mergesort")
        if part["file_name"].duplicated().any():
            raise ValueError(f"duplicate file names for {machine} section {section}")
        score_name, decision_name = submission_file_names(machine, section, rules, domain)
        decisions = _check_decisions(part["decision"], f"{machine} section {section}")
        names = part["file_name"].astype(str).tolist()
        written.append(_write_rows(out / score_name,
                                   ([n, _fmt(s)] for n, s in zip(names, part["score"], strict=True))))
        written.append(_write_rows(out / decision_name,
                                   ([n, int(d)] for n, d in zip(names, decisions, strict=True))))
    return written


class BadSubmissionFile(BadInput, ValueError):
    """An official-format file that is not one (binary, another shape, a value that is not a score or a
    0/1 decision); the message names the file and the row."""


def _read_two_columns(path: str | Path) -> list[tuple[str, str]]:
    try:
        text = read_text(path, "an official-format file", "write it again")
    except DamagedFile as err:
        raise BadSubmissionFile(str(err)) from None
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or not row[0].strip():
            raise BadSubmissionFile(f"{path}: row {number}: expected 'file_name,value' rows, found {row!r}")
    return [(r[0], r[1]) for r in rows]


def read_submission_scores(path: str | Path) -> pd.DataFrame:
    """Read an anomaly-score (or decision) CSV into a frame with ``file_name`` and float ``score``."""
    rows = _read_two_columns(path)
    scores = np.empty(len(rows), dtype=np.float64)
    for number, (name, value) in enumerate(rows):
        try:
            scores[number] = float(value)
        except ValueError:
            raise BadSubmissionFile(f"{path}: row {number + 1} ({name}): score {value!r} is not a number") from None
    return pd.DataFrame({"file_name": [r[0] for r in rows], "score": scores})


def read_submission_decisions(path: str | Path) -> pd.DataFrame:
    """Read a decision-result CSV into a frame with ``file_name`` and int ``decision`` (0/1, also written
    as 0.0/1.0 or False/True; anything else is refused by name)."""
    rows = _read_two_columns(path)
    decisions = []
    for number, (name, value) in enumerate(rows, 1):
        flag = parse_flag(value)
        if flag is None:
            raise BadSubmissionFile(f"{path}: row {number} ({name}): decision {value!r} is not 0 or 1")
        decisions.append(flag)
    return pd.DataFrame({"file_name": [r[0] for r in rows], "decision": np.array(decisions, dtype=np.int64)})


def domain_and_label(file_name: str) -> tuple[str, str]:
    """(domain, label) carried by a DCASE test clip name (see `asd.dataset.layout.parse_clip_name`);
    ("unknown", "unknown") for a name in no DCASE style."""
    try:
        name = parse_clip_name(file_name)
    except UnparseableName:
        return "unknown", "unknown"
    return name.domain, name.label


def predictions_from_submission(folder: str | Path, rules: str) -> pd.DataFrame:
    """Rebuild a predictions frame from a folder of submission files.

    Domain and label come from the clip names (see :func:`domain_and_label`); ``threshold`` is NaN (it is
    not part of a submission) and ``decision`` is NaN where no decision file exists.
    """
    check_rules(rules)
    pattern = _SCORE_FILE_PATTERNS[rules]
    frames = []
    for path in sorted(Path(folder).glob("anomaly_score_*.csv")):
        match = pattern.match(path.name)
        if match is None:
            continue
        part = read_submission_scores(path)
        decision_path = path.with_name("decision_result_" + path.name[len("anomaly_score_"):])
        if decision_path.exists():
            dec = read_submission_decisions(decision_path).set_index("file_name")["decision"]
            if set(dec.index) != set(part["file_name"]):
                raise ValueError(f"{decision_path.name} does not list the same clips as {path.name}")
            part["decision"] = part["file_name"].map(dec).astype(np.float64)
        else:
            part["decision"] = np.nan
        parsed = [domain_and_label(n) for n in part["file_name"]]
        part["domain"] = [p[0] for p in parsed]
        part["label"] = [p[1] for p in parsed]
        part["machine"] = match["machine"]
        part["section"] = match["section"]
        part["threshold"] = np.nan
        frames.append(part)
    if not frames:
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(PREDICTION_COLUMNS)]


def recompute_from_submission(folder: str | Path, rules: str) -> pd.DataFrame:
    """Metrics per machine x section recomputed from written submission files (see ``metrics_table``)."""
    return metrics_table(predictions_from_submission(folder, rules), rules)


def _cell(value: object) -> object:
    if isinstance(value, (float, np.floating)):
        return _fmt(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return value


def write_machine_result(predictions: pd.DataFrame, out_path: str | Path, rules: str) -> Path:
    """Write one machine type's ``result.csv`` in the baseline layout (see ``metrics.machine_results``).

    A header row, one row per section (per section and domain under 2021 rules), then the "arithmetic mean"
    and "harmonic mean" rows. Numbers are written with round-trip precision; undefined ones as ``nan``.
    """
    table = machine_results(predictions, rules)
    rows = [list(table.columns)] + [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    return _write_rows(Path(out_path), rows)


def write_summary(predictions: pd.DataFrame, summary_csv: str | Path, official_csv: str | Path,
                  rules: str) -> dict[str, float]:
    """Write ``summary.csv`` (one row per machine x section, every metric) and ``official_score.csv``.

    ``official_score.csv`` holds ``metric,value`` rows from ``metrics.dataset_score``; the same numbers are
    returned. NaN scores mean "not measurable" (no labelled clips).
    """
    table = metrics_table(predictions, rules)
    rows = [list(table.columns)] + [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    _write_rows(Path(summary_csv), rows)
    scores = dataset_score(predictions, rules)
    _write_rows(Path(official_csv),
                [["metric", "value"], ["rules", rules]] + [[k, _cell(v)] for k, v in scores.items()])
    return scores
