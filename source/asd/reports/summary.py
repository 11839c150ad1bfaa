"""What a finished run prints (per dataset the official numbers and the false-alarm rates), and a
side-by-side comparison of several runs. Formatting only: the tables are read through `RunFolder`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from asd.errors import MAIN_COMMAND
from asd.evaluation.metrics import metrics_table, rules_label
from asd.run_folder import RunFolder

_SHOWN = {
    "dcase2022": ["AUC (source)", "AUC (target)", "pAUC", "F1 score (source)", "F1 score (target)"],
    "dcase2021": ["AUC (source)", "AUC (target)", "pAUC (source)", "pAUC (target)"],
    "dcase2020": ["AUC", "pAUC", "F1 score"],
}


def _fmt(value: float) -> str:
    return "   n/a" if not np.isfinite(value) else f"{value:6.3f}"


def run_summary(folder: RunFolder, predictions: pd.DataFrame, scores: dict[tuple[str, str], dict[str, float]]
                ) -> str:
    """The text a test stage prints and keeps as summary.txt: per dataset (and rule set) the metrics of each
    machine type and section, the official score, and the false-alarm rates of the thresholds.
    `predictions` carry a `rules` column; `scores` are the official numbers per (dataset, rules)."""
    thresholds = folder.read_thresholds()
    lines = []
    for (dataset, rules), part in predictions.groupby(["dataset", "rules"], sort=True):
        table = metrics_table(part, rules)
        columns = _SHOWN[rules]
        lines += ["", f"dataset {dataset}  ({rules_label(rules)}, {len(part)} test clips)",
                  f"  {'machine':<20}{'section':>8}  " + "  ".join(f"{c:>17}" for c in columns)]
        for row in table.itertuples(index=False):
            values = [row[table.columns.get_loc(c)] for c in columns]
            lines.append(f"  {row.machine:<20}{row.section:>8}  "
                         + "  ".join(f"{_fmt(float(v)):>17}" for v in values))
        official = scores[(dataset, rules)].get("official score", float("nan"))
        if np.isfinite(official):
            lines.append(f"  official score ({rules_label(rules)}): {official:.4f}   "
                         f"({int(scores[(dataset, rules)]['n_values'])} values, "
                         f"{int(scores[(dataset, rules)]['n_missing'])} undefined)")
        else:
            why = ("test labels unknown" if (part["label"] == "unknown").all()
                   else "no section has both normal and anomalous test clips")
            lines.append(f"  official score: not measurable ({why}); scores and decisions are written")
        if thresholds is not None:
            lines += _false_alarm_lines(thresholds[thresholds["dataset"] == dataset])
    written = [path.name for path in (folder.predictions_csv, folder.thresholds_csv) if path.is_file()]
    lines += ["", f"outputs in {folder}: {', '.join(written)}, <dataset>/summary.csv, "  # claims only what exists
                  "<dataset>/submission/, <dataset>/<machine>/{result.csv,roc.png,score_histogram.png,"
                  "oof_scores.csv,oof_scores.png}"]
    return "\n".join(lines).lstrip("\n")


def _false_alarm_lines(thresholds: pd.DataFrame) -> list[str]:
    """One line per machine type: the expected false-alarm rate of each section x domain threshold (each
    section's where the names tell no domain), with its 95 % interval."""
    lines = []
    for machine, rows in thresholds.groupby("machine", sort=True):
        finest = rows[(rows["section"] != "*") & (rows["domain"] != "*")]
        finest = finest if len(finest) else rows[rows["section"] != "*"]
        parts = [f"{r.section}{'' if r.domain == '*' else '/' + r.domain} {r.expected_false_alarm_rate:.1%} "
                 f"[{r.false_alarm_low:.0%}, {r.false_alarm_high:.0%}]" for r in finest.itertuples(index=False)]
        held = rows[rows["section"] == "*"]
        if "held_out_false_alarm_rate" in rows and len(held) and np.isfinite(held["held_out_false_alarm_rate"].iloc[0]):
            parts.append(f"on {int(held['n_held_out'].iloc[0])} held-out clips "
                         f"{held['held_out_false_alarm_rate'].iloc[0]:.1%}")
        lines.append(f"  {machine}: expected false alarms " + ", ".join(parts))
    if lines:
        aim = 100 - float(thresholds["percentile"].iloc[0])
        lines.append(f"  (cross-fitted on the out-of-fold scores of the normal training clips, 95 % interval; "
                     f"aim {aim:.0f}%)")
    return lines


def run_scores(run: str | Path) -> pd.DataFrame:
    """Official numbers of one run: one row per (dataset, metric)."""
    folder = RunFolder(run)
    rows = []
    for dataset in folder.datasets():
        table = folder.read_official_scores(dataset)
        for metric, value in zip(table["metric"], table["value"], strict=True):
            if metric != "rules":
                rows.append({"dataset": dataset, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=["dataset", "metric", "value"])


def compare_runs(runs: list[Path]) -> str:
    """Per machine x section metrics and the official score, one column block per run."""
    merged = comparison_frame(runs)
    if merged is None:
        return f"no evaluated runs found (run `{MAIN_COMMAND} test --run RUN` first)"
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format",
                           "{:.4f}".format):
        return merged.to_string(na_rep="")


def comparison_frame(runs: list[Path]) -> pd.DataFrame | None:
    """The table of `compare_runs` (None when no run was evaluated)."""
    blocks = []
    for run in runs:
        folder = RunFolder(run)
        label = folder.path.name
        for dataset in folder.datasets():
            table = folder.read_summary(dataset)
            keep = [c for c in ("AUC (source)", "AUC (target)", "pAUC", "AUC") if c in table.columns]
            part = table[["machine", "section", *keep]].assign(dataset=dataset)
            part = part.set_index(["dataset", "machine", "section"])
            part.columns = pd.MultiIndex.from_product([[label], part.columns])
            blocks.append(part)
        scores = run_scores(run)
        official = scores[scores["metric"] == "official score"]
        for row in official.itertuples(index=False):
            blocks.append(pd.DataFrame({(label, "official score"): [row.value]},
                                       index=pd.MultiIndex.from_tuples([(row.dataset, "ALL", "")],
                                                                       names=["dataset", "machine", "section"])))
    if not blocks:
        return None
    merged = pd.concat(blocks, axis=1)
    return merged.T.groupby(level=[0, 1], sort=False).first().T
