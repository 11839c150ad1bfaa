"""Diagnostic plots written straight to PNG files.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no display is needed and no global backend
state is touched. Every function returns the written path, or None when there is nothing to plot (for
example ROC curves of an unlabelled test set).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from asd.evaluation.metrics import DOMAINS, auc_or_nan
from asd.folders import atomic_file

_DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    """Draw `fig` into `path` whole or not at all (the format from the name: the temporary has another)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=_DPI, format=out.suffix.lstrip(".") or "png")
    return out


def _roc_sets(df: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(legend label, y, scores) per section and domain, with AUC defined as the 2022+ rules define it."""
    lab = df[df["label"].isin(["normal", "anomaly"])]
    sets = []
    for section in sorted(lab["section"].astype(str).unique()):
        part = lab[lab["section"].astype(str) == section]
        y_all = (part["label"] == "anomaly").to_numpy(np.int64)
        s_all = part["score"].to_numpy(np.float64)
        domains = [d for d in DOMAINS if ((part["domain"] == d) & (part["label"] == "normal")).any()]
        if not domains:
            # No domain information (e.g. DCASE2020 IDs): one curve over all clips of the section.
            sets.append((f"section {section}", y_all, s_all))
        for d in domains:
            # This domain's normals against all anomalies of the section.
            keep = ((part["domain"] == d) | (part["label"] == "anomaly")).to_numpy()
            sets.append((f"section {section} {d}", y_all[keep], s_all[keep]))
    return [(name, y, s) for name, y, s in sets if np.unique(y).size == 2]


def plot_roc(predictions: pd.DataFrame, path: str | Path, title: str | None = None) -> Path | None:
    """ROC curves of one machine type: per section, source and target normals each against all anomalies.

    Returns None (and writes nothing) when no section has both normal and anomalous labelled clips.
    """
    sets = _roc_sets(predictions)
    if not sets:
        return None
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, y, s in sets:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc_or_nan(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.axvline(0.1, color="grey", linestyle="--", linewidth=0.8, label="max FPR for pAUC")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=title or _machine_title(predictions, "ROC"))
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _machine_title(df: pd.DataFrame, what: str) -> str:
    machines = sorted(df["machine"].astype(str).unique()) if "machine" in df else []
    return f"{', '.join(machines)} {what}".strip()


def plot_score_histograms(predictions: pd.DataFrame, path: str | Path, bins: int = 40,
                          title: str | None = None) -> Path | None:
    """Histograms of clip scores by domain x label, thresholds drawn as vertical lines.

    Unlabelled clips are drawn as their own "unknown" group. Returns None when there is no finite score.
    """
    df = predictions[np.isfinite(predictions["score"].to_numpy(np.float64))]
    if df.empty:
        return None
    edges = np.histogram_bin_edges(df["score"].to_numpy(np.float64), bins=bins)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for (domain, label), part in df.groupby(["domain", "label"], sort=True):
        ax.hist(part["score"].to_numpy(np.float64), bins=edges, alpha=0.45, label=f"{domain} {label}",
                histtype="stepfilled", linestyle="-" if label == "normal" else "--")
    if "threshold" in df:
        thresholds = np.unique(df["threshold"].to_numpy(np.float64))
        thresholds = thresholds[np.isfinite(thresholds)]
        for i, t in enumerate(thresholds):
            ax.axvline(t, color="black", linewidth=1, label="threshold" if i == 0 else None)
    ax.set(xlabel="anomaly score", ylabel="clips", title=title or _machine_title(df, "scores"))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_out_of_fold_histograms(scores: pd.DataFrame, thresholds: pd.DataFrame | None, path: str | Path,
                                bins: int = 30, title: str | None = None) -> Path | None:
    """Histograms of the out-of-fold scores of the normal training clips, one panel per section, one colour
    per domain, with the thresholds that apply there drawn as vertical lines (no test label is used).
    Returns None when there is no finite score."""
    df = scores[np.isfinite(scores["score"].to_numpy(np.float64))]
    if df.empty:
        return None
    sections = sorted(df["section"].astype(str).unique())
    fig = Figure(figsize=(4.2 * min(len(sections), 3), 3.4 * ((len(sections) + 2) // 3)))
    edges = np.histogram_bin_edges(df["score"].to_numpy(np.float64), bins=bins)
    for i, section in enumerate(sections):
        ax = fig.add_subplot((len(sections) + 2) // 3, min(len(sections), 3), i + 1)
        part = df[df["section"].astype(str) == section]
        for domain, rows in part.groupby("domain", sort=True):
            ax.hist(rows["score"].to_numpy(np.float64), bins=edges, alpha=0.5, histtype="stepfilled",
                    label=f"{domain} (n={len(rows)})")
        if thresholds is not None and len(thresholds):
            mine = thresholds[thresholds["section"].astype(str) == section]
            for row, style in zip(mine.itertuples(index=False), ("-", "--", ":"), strict=False):
                ax.axvline(row.threshold, color="black", linestyle=style, linewidth=1,
                           label=f"threshold {row.domain}")
        ax.set(xlabel="out-of-fold score", ylabel="normal clips", title=f"section {section}")
        ax.legend(fontsize="x-small")
    fig.suptitle(title or _machine_title(df, "out-of-fold scores of normal training clips"), fontsize="medium")
    fig.tight_layout()
    return _save(fig, path)


def _loss_series(history: object) -> dict[str, list[float]]:
    """Normalise the accepted history shapes to {series name: values per epoch}."""
    if isinstance(history, Mapping):
        return {str(k): [float(x) for x in v] for k, v in history.items()
                if isinstance(v, Sequence | np.ndarray) and len(v) > 0}
    items = list(history) if isinstance(history, Sequence | np.ndarray) else []
    if not items:
        return {}
    if all(isinstance(r, Mapping) for r in items):
        names = [k for k in dict.fromkeys(k for r in items for k in r) if k != "epoch"]
        series = {str(k): [float(r[k]) if isinstance(r.get(k), numbers.Real) else np.nan for r in items]
                  for k in names}
        return {k: v for k, v in series.items() if np.isfinite(v).any()}
    if all(isinstance(r, Sequence | np.ndarray) for r in items):
        names = ["train", "val"] if len(items) == 2 else [f"series {i}" for i in range(len(items))]
        return {n: [float(x) for x in r] for n, r in zip(names, items, strict=True) if len(r) > 0}
    return {"train": [float(x) for x in items]}


def plot_loss_curve(history: object, path: str | Path, title: str = "loss") -> Path | None:
    """Plot losses per epoch.

    ``history`` may be a sequence of per-epoch dicts (e.g. ``{"epoch": 1, "train_loss": .., "val_loss": ..}``;
    every numeric key except "epoch" becomes a curve), a mapping of name -> list of values, a pair of lists
    (train, val), or one list of training losses. Returns None when there is no value to plot.
    """
    series = _loss_series(history)
    if not series:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
