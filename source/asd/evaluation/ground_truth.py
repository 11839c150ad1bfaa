"""`evaluate`: evaluation-set figures from the ground truth the organisers publish after each challenge.

Ground-truth folder (the official evaluator repositories' layout):

    ground_truth_data/ground_truth_<machine>_section_<SS>_test.csv        file_name,0|1 (1 = anomaly)
    ground_truth_domain/ground_truth_<machine>_section_<SS>_test.csv      file_name,0|1 (1 = target)
    ground_truth_attributes/ground_truth_<machine>_section_<SS>_test.csv  file_name,<labelled name> (2023+)

gives DCASE 2022+ rules; DCASE 2021's per-domain files (`..._section_<SS>_<source|target>_test.csv`, no
domain folder) give 2021 rules. A submission is any folder of official `anomaly_score_*` and
`decision_result_*` files (a run folder's `<dataset>/submission/` too). Rows may name a clip by its
evaluation name or by its labelled name from `ground_truth_attributes` (as the official evaluator accepts).
The metrics are those of `asd.evaluation.metrics`; the confidence interval is the official evaluator's: a jackknife
(leave one clip out) over all clips pooled, of the AUC and of the pAUC, 95 % Student-t half-widths, averaged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from asd.errors import AsdError, DamagedFile
from asd.evaluation.metrics import MAX_FPR, auc_or_nan, dataset_score, metrics_table, rules_label
from asd.evaluation.submission import (
    BadSubmissionFile,
    read_submission_decisions,
    read_submission_scores,
    submission_file_names,
)
from asd.readback import parse_flag, read_text
from asd.run_folder import RunFolder, evaluation_dir_for

_GT_2022 = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")
_GT_2021 = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d+)_(?P<domain>source|target)_test\.csv$")
_SUBMISSION = re.compile(r"^(anomaly_score|decision_result)_(?P<machine>.+?)_(section|id)_\d+")


class EvaluationError(AsdError):
    """A submission that does not match the ground truth; the message lists every mismatch."""


@dataclass
class GroundTruth:
    """One row per evaluation clip: machine, section, domain, label, file_name, and alias (labelled name)."""

    table: pd.DataFrame
    rules: str

    @property
    def machines(self) -> list[str]:
        return sorted(self.table["machine"].unique())


def _read_pairs(path: Path) -> list[list[str]]:
    """The `file_name,value` rows of a ground-truth file (no header); EvaluationError naming the file and
    the row when it is binary, not UTF-8, or has a row of another shape."""
    try:
        text = read_text(path, "a ground-truth file", "use the organisers' file")
    except DamagedFile as err:
        raise EvaluationError(str(err)) from None
    rows = [line.strip().split(",", 1) for line in text.splitlines() if line.strip()]
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise EvaluationError(f"{path}: row {number}: expected 'file_name,value', found {','.join(row)!r}")
    return [[name.strip(), value.strip()] for name, value in rows]


def _flags(path: Path, rows: list[list[str]], meaning: str) -> list[int]:
    """The 0/1 values of a ground-truth file's rows: "1"/"0", "1.0"/"0.0" and "True"/"False" are read as
    what they say; anything else is ambiguous and refused, naming the file and the row."""
    flags = []
    for number, (name, value) in enumerate(rows, 1):
        flag = parse_flag(value)
        if flag is None:
            raise EvaluationError(f"{path}: row {number} ({name}): {value!r} is not 0 or 1 ({meaning}; "
                                  "accepted: 0/1, 0.0/1.0, False/True)")
        flags.append(flag)
    return flags


def load_ground_truth(folder: Path) -> GroundTruth:
    """Read an official ground-truth folder (see the module docstring)."""
    folder = Path(folder)
    data_dir = folder / "ground_truth_data"
    if not data_dir.is_dir():
        raise EvaluationError(f"{folder} has no ground_truth_data/ folder (the official evaluator's layout: "
                              "ground_truth_data/, ground_truth_domain/, ground_truth_attributes/)")
    frames = []
    for path in sorted(data_dir.glob("ground_truth_*.csv")):
        rows = _read_pairs(path)
        labels = _flags(path, rows, "1 = anomaly")
        if (m := _GT_2021.match(path.name)) is not None:
            domains, rules = [m["domain"]] * len(rows), "dcase2021"
        elif (m := _GT_2022.match(path.name)) is not None:
            domain_path = folder / "ground_truth_domain" / path.name
            if not domain_path.exists():
                raise EvaluationError(f"{domain_path} is missing (every ground_truth_data file needs its domain file)")
            domain_rows = _read_pairs(domain_path)
            domain_of = dict(zip((n for n, _ in domain_rows), _flags(domain_path, domain_rows, "1 = target domain"),
                                 strict=True))
            missing = [n for n, _ in rows if n not in domain_of]
            if missing:
                raise EvaluationError(f"{domain_path}: no domain for {len(missing)} clip(s), e.g. {missing[0]}")
            domains = ["target" if domain_of[n] else "source" for n, _ in rows]
            rules = "dcase2022"
        else:
            raise EvaluationError(f"{path.name}: not a ground-truth file name")
        alias: dict[str, str] = {}
        attr_path = folder / "ground_truth_attributes" / path.name
        if attr_path.exists():
            alias = {n: f"{renamed.strip()}.wav" for n, renamed in _read_pairs(attr_path)}
        frames.append(pd.DataFrame({
            "machine": m["machine"], "section": m["section"], "rules": rules, "domain": domains,
            "file_name": [n for n, _ in rows],
            "label": ["anomaly" if flag else "normal" for flag in labels],
            "alias": [alias.get(n) for n, _ in rows], "gt_file": path.name,
        }))
    if not frames:
        raise EvaluationError(f"no ground_truth_*.csv files in {data_dir}")
    table = pd.concat(frames, ignore_index=True)
    rules = sorted(set(table["rules"]))
    if len(rules) > 1:
        raise EvaluationError(f"{folder} mixes 2021-style and 2022-style ground-truth files")
    dup = table.duplicated(["machine", "section", "file_name"])
    if dup.any():
        raise EvaluationError(f"ground truth lists {table[dup]['file_name'].iloc[0]} twice")
    return GroundTruth(table.drop(columns="rules"), rules[0])


def submission_folders(path: Path) -> list[Path]:
    """Folders of official files in or below `path`: a run folder's own `<dataset>/submission/` folders
    (asked of the run folder), the folder itself when it holds anomaly_score files, else those of its
    subfolders (a folder of teams' submissions, or of runs)."""
    path = Path(path)
    if RunFolder(path).config_json.is_file():
        return RunFolder(path).submission_dirs()
    if any(path.glob("anomaly_score_*.csv")):
        return [path]
    return [found for child in sorted(p for p in path.iterdir() if p.is_dir()) for found in submission_folders(child)]


@dataclass
class Evaluation:
    """Figures of one submission folder against the ground truth."""

    folder: Path
    predictions: pd.DataFrame
    table: pd.DataFrame
    scores: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _align(gt: pd.DataFrame, path: Path, kind: str, problems: list[str]) -> pd.Series | None:
    """Values of one submission file indexed by ground-truth file name, or None (problems recorded)."""
    if not path.exists():
        problems.append(f"missing file {path.name} ({len(gt)} clips in the ground truth)")
        return None
    frame = read_submission_scores(path) if kind == "score" else read_submission_decisions(path)
    value = frame.columns[1]
    to_gt = {a: n for n, a in zip(gt["file_name"], gt["alias"], strict=True) if a}
    names = frame["file_name"].map(lambda n: to_gt.get(n, n))
    dup = names[names.duplicated()].unique()
    if len(dup):
        problems.append(f"{path.name}: {len(dup)} clip(s) listed more than once, e.g. {dup[0]}")
    expected = set(gt["file_name"])
    extra = sorted(set(names) - expected)
    missing = sorted(expected - set(names))
    if extra:
        problems.append(f"{path.name}: {len(extra)} row(s) not in the ground truth, e.g. {extra[0]}")
    if missing:
        problems.append(f"{path.name}: {len(missing)} ground-truth clip(s) have no row, e.g. {missing[0]}")
    if len(dup) or extra or missing:
        return None
    return pd.Series(frame[value].to_numpy(), index=names.to_numpy())


def evaluate_folder(folder: Path, truth: GroundTruth, with_ci: bool = True) -> Evaluation:
    """Official figures of one submission folder; raises EvaluationError listing every mismatch."""
    folder = Path(folder)
    problems: list[str] = []
    expected_files: set[str] = set()
    frames = []
    keys = ["machine", "section"] + (["domain"] if truth.rules == "dcase2021" else [])
    for key, gt in truth.table.groupby(keys, sort=True):
        domain = key[2] if truth.rules == "dcase2021" else None
        score_name, decision_name = submission_file_names(key[0], key[1], truth.rules, domain)
        expected_files |= {score_name, decision_name}
        scores = _align(gt, folder / score_name, "score", problems)
        decisions = _align(gt, folder / decision_name, "decision", problems)
        if scores is None or decisions is None:
            continue
        frames.append(gt.assign(score=gt["file_name"].map(scores).astype(float),
                                decision=gt["file_name"].map(decisions).astype(int), threshold=np.nan))
    notes = []
    extra_machines = sorted({m["machine"] for f in folder.glob("*.csv")
                             if f.name not in expected_files and (m := _SUBMISSION.match(f.name))})
    for machine in extra_machines:
        if machine in truth.machines:
            problems.append(f"{machine}: file(s) for sections the ground truth does not have")
        else:
            notes.append(f"{machine}: no ground truth for this machine type; its files were left out")
    if problems:
        raise EvaluationError(f"{folder} does not match the ground truth:\n  " + "\n  ".join(problems))
    predictions = pd.concat(frames, ignore_index=True)
    table = metrics_table(predictions, truth.rules)
    scores = dataset_score(predictions, truth.rules)
    if with_ci:
        scores.update(jackknife_ci(predictions))
    return Evaluation(folder, predictions, table, scores, notes)


def jackknife(fn, y: np.ndarray, s: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Jackknife estimate of fn(y, s) and the half-width of its `confidence` interval (Student t, N-1 dof).

    Leave-one-out values theta_i; estimate = mean(N*theta - (N-1)*theta_i); standard error =
    sqrt(sum((theta_i - mean theta_i)^2) / (N*(N-1))) - the form the official evaluator uses.
    """
    n = len(y)
    theta = fn(y, s)
    keep = np.ones(n, dtype=bool)
    loo = np.empty(n)
    for i in range(n):
        keep[i] = False
        loo[i] = fn(y[keep], s[keep])
        keep[i] = True
    estimate = float(np.mean(n * theta - (n - 1) * loo))
    se = float(np.sqrt(np.sum((loo - loo.mean()) ** 2) / (n * (n - 1))))
    return estimate, float(abs(scipy.stats.t.ppf((1 - confidence) / 2, n - 1)) * se)


def jackknife_ci(predictions: pd.DataFrame) -> dict[str, float]:
    """The official score's 95 % CI half-width: mean of the AUC's and the pAUC's jackknife half-widths, over
    every clip pooled (machines and sections in sorted order, clips sorted by name, as the evaluator reads)."""
    pooled = predictions.sort_values(["machine", "section", "file_name"], kind="mergesort")
    y = (pooled["label"] == "anomaly").to_numpy(np.int64)
    s = pooled["score"].to_numpy(np.float64)
    auc_jack, auc_ci = jackknife(auc_or_nan, y, s)
    pauc_jack, pauc_ci = jackknife(lambda a, b: auc_or_nan(a, b, MAX_FPR), y, s)
    return {"official score ci95": float(np.mean([auc_ci, pauc_ci])), "AUC (all, jackknife)": auc_jack,
            "AUC ci95": auc_ci, "pAUC (all, jackknife)": pauc_jack, "pAUC ci95": pauc_ci}


def format_evaluation(ev: Evaluation, rules: str) -> str:
    """A readable block: per machine and section, then the official score with its interval."""
    cols = [c for c in ("AUC (source)", "AUC (target)", "pAUC", "F1 score (source)", "F1 score (target)")
            if c in ev.table.columns]
    lines = [f"{ev.folder}  ({rules_label(rules)}, {len(ev.predictions)} clips)",
             f"  {'machine':<20}{'section':>8}  " + "  ".join(f"{c:>17}" for c in cols)]
    for _, row in ev.table.iterrows():
        lines.append(f"  {row['machine']:<20}{row['section']:>8}  " + "  ".join(f"{float(row[c]):17.4f}" for c in cols))
    official = ev.scores["official score"]
    ci = ev.scores.get("official score ci95")
    lines.append(f"  official score: {official:.4f}" + (f" ± {ci:.4f} (95 % jackknife CI)" if ci is not None else ""))
    lines += [f"  note: {n}" for n in ev.notes]
    return "\n".join(lines)


def evaluate_folders(ground_truth: Path, folders, with_ci: bool = True, echo: Callable[[str], None] = print,
                     echo_error: Callable[[str], None] | None = None) -> bool:
    """Evaluate every folder of official files found in `folders` (run folders or submissions) against the
    ground truth; figures go to an `evaluation/` folder beside each. Every mismatch is said, a folder at a
    time; returns whether all of them were evaluated."""
    truth = load_ground_truth(ground_truth)
    all_done = True
    for folder in folders:
        found = [f for f in submission_folders(folder)  # e.g. a run holding a dev and an eval dataset
                 if any(any(f.glob(f"anomaly_score_{m}_*.csv")) for m in truth.machines)]
        if not found:
            (echo_error or echo)(f"error: no anomaly_score_*.csv files of {', '.join(truth.machines)} in or below "
                                 f"{folder}")
            all_done = False
            continue
        for sub in found:
            try:
                ev = evaluate_folder(sub, truth, with_ci=with_ci)
            except (EvaluationError, BadSubmissionFile) as err:  # this folder only: the others are still evaluated
                (echo_error or echo)(f"error: {err}")
                all_done = False
                continue
            out = write_evaluation(ev, evaluation_dir_for(sub), truth.rules)
            echo(format_evaluation(ev, truth.rules))
            echo(f"  -> {out}")
    return all_done


def write_evaluation(ev: Evaluation, out_dir: Path, rules: str) -> Path:
    """evaluation/summary.csv, official_score.csv and predictions.csv in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev.table.to_csv(out / "summary.csv", index=False)
    pd.DataFrame([["rules", rules], *ev.scores.items()], columns=["metric", "value"]).to_csv(
        out / "official_score.csv", index=False)
    ev.predictions.drop(columns=["alias", "gt_file"]).to_csv(out / "predictions.csv", index=False)
    return out
