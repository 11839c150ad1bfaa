"""Official DCASE Task 2 metrics, computed the way the public evaluators compute them.

Input is a *predictions* frame with one row per test clip and the columns ``file_name``, ``machine``,
``section``, ``domain`` ("source" | "target" | "unknown"), ``label`` ("normal" | "anomaly" | "unknown"),
``score`` (higher = more anomalous), ``threshold`` and ``decision`` (0/1, ``score > threshold``).

Rules (``rules`` argument):

* ``"dcase2022"`` (2022-2026): per machine type and section, AUC (source) = source normals vs *all*
  anomalies of both domains, AUC (target) likewise; pAUC over every clip of the section, domains pooled;
  precision / recall / F1 per domain on that domain's own clips. Official score = harmonic mean of the flat
  list of every AUC (source), AUC (target) and pAUC, each floored at machine epsilon.
* ``"dcase2021"``: AUC, pAUC, precision, recall, F1 per section and domain on that domain's own clips;
  official score = harmonic mean over all of them (AUC and pAUC).
* ``"dcase2020"``: AUC and pAUC per machine ID over its test clips; arithmetic means over IDs.

pAUC is ``sklearn.metrics.roc_auc_score(y, s, max_fpr=0.1)`` (McClish-standardised). Clips labelled
"unknown" never enter a metric; a value that cannot be defined (one class missing) is NaN.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.stats
from sklearn import metrics as skm

from asd.dataset.layout import DOMAINS

RULES = ("dcase2020", "dcase2021", "dcase2022")
# How each rule set is named on screen and in pages: "dcase2022" are the rules of every year from 2022 on.
RULE_LABELS = {"dcase2020": "DCASE 2020 rules", "dcase2021": "DCASE 2021 rules",
               "dcase2022": "DCASE 2022-2026 rules"}
MAX_FPR = 0.1
# The evaluators floor every value at this before harmonic means and divisions.
EPS = sys.float_info.epsilon
MEAN_ROWS = ("arithmetic mean", "harmonic mean")

_PRF = ("precision", "recall", "F1 score")
COLUMNS_2022 = (
    ["AUC (source)", "AUC (target)", "pAUC", "pAUC (source)", "pAUC (target)"]
    + [f"{m} ({d})" for m in _PRF for d in DOMAINS]
)
COLUMNS_2021 = (
    [f"AUC ({d})" for d in DOMAINS] + [f"pAUC ({d})" for d in DOMAINS]
    + [f"{m} ({d})" for m in _PRF for d in DOMAINS]
)
COLUMNS_2020 = ["AUC", "pAUC", *_PRF]
# Per-row columns of the 2021-style table (one row per section x domain) and of the 2020 table.
ROW_COLUMNS_2021 = ["AUC", "pAUC", *_PRF]


def check_rules(rules: str) -> str:
    """Return ``rules`` if it names a known rule set, else raise ValueError."""
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; expected one of {RULES}")
    return rules


def rules_label(rules: str) -> str:
    """The rule set as a reader knows it, e.g. "DCASE 2022-2026 rules" (never a year the data is not from)."""
    return RULE_LABELS[check_rules(rules)]


def metric_columns(rules: str) -> list[str]:
    """Names of the per-section metrics that :func:`section_metrics` returns for ``rules``."""
    return list({"dcase2022": COLUMNS_2022, "dcase2021": COLUMNS_2021,
                 "dcase2020": COLUMNS_2020}[check_rules(rules)])


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Labelled clips only, sorted by file name like the evaluator's readers, with y = 1 for anomalies."""
    out = df[df["label"].isin(["normal", "anomaly"])].sort_values("file_name", kind="mergesort")
    return out.assign(y=(out["label"] == "anomaly").astype(np.int64))


def is_measurable(df: pd.DataFrame) -> bool:
    """True when at least one clip carries a normal/anomaly label (otherwise report "not measurable")."""
    return bool(df["label"].isin(["normal", "anomaly"]).any())


def auc_or_nan(y_true: Iterable[int], scores: Iterable[float], max_fpr: float | None = None) -> float:
    """``roc_auc_score`` (pAUC when ``max_fpr`` is given), or NaN when both classes are not present."""
    y = np.asarray(list(y_true), dtype=np.int64)
    s = np.asarray(list(scores), dtype=np.float64)
    if y.size == 0 or np.unique(y).size < 2:
        return float("nan")
    return float(skm.roc_auc_score(y, s, max_fpr=max_fpr))


def precision_recall_f1(y_true: Iterable[int], decisions: Iterable[int]) -> tuple[float, float, float]:
    """Precision, recall, F1 with the evaluator's epsilon guards on every denominator.

    As in the evaluator, no positive decision gives precision 0. We differ only where the evaluator has no
    defined answer either: no clips or a missing (NaN) decision -> all NaN; no anomalous clip -> recall and
    F1 NaN (the evaluator would print 0, which would read as "missed every anomaly").
    """
    y = np.asarray(list(y_true), dtype=np.int64)
    d_raw = np.asarray(list(decisions), dtype=np.float64)
    # Missing decisions (e.g. a 2020 submission, which had no decision files) leave P/R/F1 undefined.
    if y.size == 0 or np.isnan(d_raw).any():
        return float("nan"), float("nan"), float("nan")
    d = d_raw.astype(np.int64)
    # labels=[0, 1] keeps a 2x2 matrix even when one class is absent (a bare ravel() would not).
    _tn, fp, fn, tp = skm.confusion_matrix(y, d, labels=[0, 1]).ravel()
    prec = tp / np.maximum(tp + fp, EPS)
    if tp + fn == 0:
        return float(prec), float("nan"), float("nan")
    rec = tp / np.maximum(tp + fn, EPS)
    f1 = 2.0 * prec * rec / np.maximum(prec + rec, EPS)
    return float(prec), float(rec), float(f1)


def section_metrics(df_section: pd.DataFrame, rules: str, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """Metrics of one machine type x section (one machine ID under 2020 rules).

    Keys are :func:`metric_columns` ``(rules)``; undefined values are NaN, never an exception.
    """
    check_rules(rules)
    lab = _labelled(df_section)
    y, s, dec, dom = lab["y"].to_numpy(), lab["score"].to_numpy(float), lab["decision"], lab["domain"]
    out: dict[str, float] = {}
    if rules == "dcase2020":
        out["AUC"] = auc_or_nan(y, s)
        out["pAUC"] = auc_or_nan(y, s, max_fpr)
        out.update(zip(_PRF, precision_recall_f1(y, dec), strict=True))
        return out

    if rules == "dcase2022":
        for d in DOMAINS:
            # The domain's normals against every anomaly of the section, whatever its domain.
            keep = ((dom == d) | (lab["y"] == 1)).to_numpy()
            out[f"AUC ({d})"] = auc_or_nan(y[keep], s[keep])
        out["pAUC"] = auc_or_nan(y, s, max_fpr)
    else:
        for d in DOMAINS:
            own = (dom == d).to_numpy()
            out[f"AUC ({d})"] = auc_or_nan(y[own], s[own])
    for d in DOMAINS:
        own = (dom == d).to_numpy()
        out[f"pAUC ({d})"] = auc_or_nan(y[own], s[own], max_fpr)
        prf = precision_recall_f1(y[own], dec.to_numpy()[own])
        out.update({f"{m} ({d})": v for m, v in zip(_PRF, prf, strict=True)})
    return {c: out[c] for c in metric_columns(rules)}


def _sections(df: pd.DataFrame) -> list[str]:
    return sorted(df["section"].astype(str).unique())


def metrics_table(predictions: pd.DataFrame, rules: str, max_fpr: float = MAX_FPR) -> pd.DataFrame:
    """One row per machine x section: ``machine``, ``section``, clip counts and every section metric.

    Machines and sections are in sorted order, the order the evaluators walk them.
    """
    check_rules(rules)
    rows = []
    pred = predictions.assign(section=predictions["section"].astype(str))
    for machine in sorted(pred["machine"].astype(str).unique()):
        of_machine = pred[pred["machine"].astype(str) == machine]
        for section in _sections(of_machine):
            part = of_machine[of_machine["section"] == section]
            row: dict[str, object] = {"machine": machine, "section": section, "n_clips": len(part),
                                      "n_normal": int((part["label"] == "normal").sum()),
                                      "n_anomaly": int((part["label"] == "anomaly").sum())}
            row.update(section_metrics(part, rules, max_fpr))
            rows.append(row)
    cols = ["machine", "section", "n_clips", "n_normal", "n_anomaly", *metric_columns(rules)]
    return pd.DataFrame(rows, columns=cols)


def _mean_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arithmetic and epsilon-floored harmonic means down each column of a (rows, metrics) array.

    Without NaN this is exactly the baselines' ``np.mean(axis=0)`` / ``hmean(maximum(., eps), axis=0)``
    (same array layout, so the same floating-point sums). Columns with NaN use their finite values only.
    """
    if values.shape[0] == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan.copy()
    amean = np.mean(values, axis=0)
    hmean = scipy.stats.hmean(np.maximum(values, EPS), axis=0)
    for j in np.flatnonzero(np.isnan(values).any(axis=0)):
        col = values[:, j][np.isfinite(values[:, j])]
        amean[j] = np.mean(col) if col.size else np.nan
        hmean[j] = official_score(col)
    return amean, hmean


def machine_results(predictions: pd.DataFrame, rules: str, max_fpr: float = MAX_FPR) -> pd.DataFrame:
    """The per-machine result table, laid out like the official baseline's result CSV.

    * dcase2022: ``section``, AUC (source), AUC (target), pAUC, pAUC (source), pAUC (target), precision /
      recall / F1 score (source, target); one row per section.
    * dcase2021: ``section``, ``domain``, AUC, pAUC, precision, recall, F1 score; one row per section and
      domain (all source rows first, as the 2021 baseline writes them).
    * dcase2020: ``id``, AUC, pAUC, precision, recall, F1 score; one row per machine ID.

    Two more rows follow: "arithmetic mean" and "harmonic mean" (values floored at machine epsilon).
    """
    check_rules(rules)
    machines = predictions["machine"].astype(str).unique()
    if len(machines) > 1:
        raise ValueError(f"machine_results expects one machine type, got {sorted(machines)}")
    table = metrics_table(predictions, rules, max_fpr)
    if rules == "dcase2021":
        keys = ["section", "domain"]
        rows = [{"section": r["section"], "domain": d, **{m: r[f"{m} ({d})"] for m in ROW_COLUMNS_2021}}
                for d in DOMAINS for _, r in table.iterrows()]
        body = pd.DataFrame(rows, columns=keys + ROW_COLUMNS_2021)
        value_cols = ROW_COLUMNS_2021
    else:
        keys = ["id"] if rules == "dcase2020" else ["section"]
        value_cols = metric_columns(rules)
        body = table.rename(columns={"section": keys[0]})[keys + value_cols]
    amean, hmean = _mean_rows(body[value_cols].to_numpy(dtype=np.float64).reshape(len(body), -1))
    tail = pd.DataFrame([[name] + [""] * (len(keys) - 1) + list(v)
                         for name, v in zip(MEAN_ROWS, (amean, hmean), strict=True)],
                        columns=keys + value_cols)
    return pd.concat([body, tail], ignore_index=True)


def official_score(values: Sequence[float] | np.ndarray, nan_policy: str = "omit") -> float:
    """Harmonic mean of a flat list, every value floored at machine epsilon (as the evaluator does).

    A zero therefore gives a tiny but finite score rather than an error. ``nan_policy="omit"`` (default)
    leaves out undefined (NaN) values - callers should report how many - while ``"propagate"`` returns NaN
    if any value is NaN. No finite value at all gives NaN.
    """
    if nan_policy not in ("omit", "propagate"):
        raise ValueError(f"nan_policy must be 'omit' or 'propagate', got {nan_policy!r}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    if nan_policy == "propagate" and np.isnan(arr).any():
        return float("nan")
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan")
    return float(scipy.stats.hmean(np.maximum(arr, EPS)))


def _finite_mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(np.mean(arr)) if arr.size else float("nan")


def dataset_score(predictions: pd.DataFrame, rules: str, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """The official summary numbers over every machine type and section of ``predictions``.

    * dcase2022: "official score" = harmonic mean of [all AUC (source), all AUC (target), all pAUC] in the
      evaluator's order (machines sorted, sections sorted); also "arithmetic mean" of the AUCs and
      "harmonic mean (source)" / "harmonic mean (target)" of the AUCs, as the evaluator reports them.
    * dcase2021: "official score" = harmonic mean of every per-domain AUC and pAUC; also each metric's own
      harmonic and arithmetic mean over all machines, sections and domains.
    * dcase2020: "AUC (arithmetic mean)" / "pAUC (arithmetic mean)" over all machine IDs, and per machine
      type "<machine> AUC (average)" / "<machine> pAUC (average)" as the 2020 evaluator's Average row.
      2020 ranked teams by rank, so no single official number existed; "official score" is the arithmetic
      mean of all AUC and pAUC values, a summary only.

    Every result has "n_values" (values that entered "official score") and "n_missing" (undefined, left
    out). All values NaN (e.g. an unlabelled test set) gives NaN scores: "not measurable".
    """
    check_rules(rules)
    table = metrics_table(predictions, rules, max_fpr)
    out: dict[str, float] = {}
    if rules == "dcase2022":
        src, tgt = table["AUC (source)"].tolist(), table["AUC (target)"].tolist()
        flat = src + tgt + table["pAUC"].tolist()
        out["official score"] = official_score(flat)
        out["arithmetic mean"] = _finite_mean(src + tgt)
        out["harmonic mean (source)"] = official_score(src)
        out["harmonic mean (target)"] = official_score(tgt)
        out["pAUC (harmonic mean)"] = official_score(table["pAUC"].tolist())
    elif rules == "dcase2021":
        # Same walk as the 2021 evaluator: machine, then domain, then section; one row per walk step.
        rows = [[r[f"{m} ({d})"] for m in ROW_COLUMNS_2021]
                for machine in table["machine"].unique()
                for d in DOMAINS
                for _, r in table[table["machine"] == machine].iterrows()]
        values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(ROW_COLUMNS_2021))
        flat = values[:, 0].tolist() + values[:, 1].tolist()
        out["official score"] = official_score(flat)
        # Column means over the same (rows, metrics) array as the evaluator's "... over all" lines.
        amean, hmean = _mean_rows(values)
        for j, m in enumerate(("AUC", "pAUC")):
            out[f"{m} (harmonic mean)"] = float(hmean[j])
            out[f"{m} (arithmetic mean)"] = float(amean[j])
    else:
        flat = table["AUC"].tolist() + table["pAUC"].tolist()
        out["official score"] = _finite_mean(flat)
        # (IDs, [AUC, pAUC]) arrays averaged down the columns, like the 2020 evaluator's Average row.
        amean, _ = _mean_rows(table[["AUC", "pAUC"]].to_numpy(dtype=np.float64))
        out["AUC (arithmetic mean)"], out["pAUC (arithmetic mean)"] = float(amean[0]), float(amean[1])
        for machine in table["machine"].unique():
            part = table[table["machine"] == machine]
            amean, _ = _mean_rows(part[["AUC", "pAUC"]].to_numpy(dtype=np.float64))
            out[f"{machine} AUC (average)"] = float(amean[0])
            out[f"{machine} pAUC (average)"] = float(amean[1])
    n_missing = int(np.isnan(np.asarray(flat, dtype=np.float64)).sum())
    out["n_values"] = float(len(flat) - n_missing)
    out["n_missing"] = float(n_missing)
    return out
