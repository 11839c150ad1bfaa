"""Decision thresholds learned from the anomaly scores of normal clips only.

DCASE Task 2 decides "anomalous" when a clip's score is strictly greater than a threshold. The reference
baselines fit a gamma distribution (shape, loc and scale all free) to the scores of *normal* clips and take
the threshold at its 90th percentile. Test labels must never be used here: thresholds come from normal
training clips scored out of fold (by models that never saw them), split by clip; `fit_threshold_table`
fits one per section, and per section and domain, from those scores.

The gamma fit is fragile on awkward inputs (negative scores, constant scores, very few scores, optimiser
failures), so :func:`fit_threshold` falls back to the empirical percentile and says why in ``note``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHODS = ("gamma", "percentile")
# Fewer scores than this cannot support a three-parameter gamma fit.
MIN_SCORES_FOR_GAMMA = 3
# Below this Kolmogorov-Smirnov p-value the fitted gamma is taken not to describe the scores.
MIN_FIT_P_VALUE = 0.01


@dataclass(frozen=True)
class ThresholdFit:
    """A fitted decision threshold and how it was obtained.

    Attributes:
        value: the threshold; a clip is anomalous when ``score > value``.
        method: the method actually used ("gamma" or "percentile"; differs from the request after a fallback).
        percentile: the percentile of the normal-score distribution, in (0, 100).
        params: gamma (shape, loc, scale) when the gamma fit was used, else empty.
        n_scores: how many finite normal scores the fit saw.
        note: empty, or why the requested method was not used / what was dropped.
    """

    value: float
    method: str
    percentile: float
    params: tuple[float, ...] = field(default_factory=tuple)
    n_scores: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, for saving next to a model (JSON friendly)."""
        out = asdict(self)
        out["params"] = list(self.params)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdFit:
        """Inverse of :meth:`to_dict`."""
        return cls(
            value=float(data["value"]),
            method=str(data["method"]),
            percentile=float(data["percentile"]),
            params=tuple(float(p) for p in data.get("params", ())),
            n_scores=int(data.get("n_scores", 0)),
            note=str(data.get("note", "")),
        )


def _gamma_problem(scores: np.ndarray) -> str:
    """Why a gamma fit should not be attempted on ``scores`` ("" when it is fine to try)."""
    if scores.size < MIN_SCORES_FOR_GAMMA:
        return f"only {scores.size} score(s); a gamma fit needs at least {MIN_SCORES_FOR_GAMMA}"
    if np.min(scores) < 0:
        return "negative scores; a gamma distribution models non-negative scores"
    if np.ptp(scores) == 0:
        return "all scores are equal; a gamma fit is degenerate"
    return ""


def _fit_gamma(scores: np.ndarray, q: float) -> tuple[float, tuple[float, float, float], str]:
    """Gamma fit as the DCASE baselines do it; returns (threshold, params, failure reason)."""
    import scipy.stats  # here: the command line reads METHODS for its choices and must start fast

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # The optimiser warns freely on near-degenerate data; the result is checked below instead.
            warnings.simplefilter("ignore")
            shape, loc, scale = scipy.stats.gamma.fit(scores)
            value = float(scipy.stats.gamma.ppf(q, shape, loc=loc, scale=scale))
    except Exception as exc:  # scipy raises several types on failed fits
        return float("nan"), (), f"gamma fit failed ({type(exc).__name__}: {exc})"
    params = (float(shape), float(loc), float(scale))
    if not np.all(np.isfinite(params)) or not np.isfinite(value):
        return float("nan"), params, "gamma fit gave a non-finite threshold"
    # A free three-parameter fit on a few dozen scores can converge to a shape that does not describe
    # them; its percentile can then lie far outside the data. Such a fit is not trusted.
    fit_p = scipy.stats.kstest(scores, "gamma", args=params).pvalue
    if fit_p < MIN_FIT_P_VALUE:
        return float("nan"), params, f"gamma fit does not describe the scores (KS test p={fit_p:.2g})"
    spread = float(np.ptp(scores))
    if not scores.min() - spread <= value <= scores.max() + spread:
        return float("nan"), params, (f"gamma threshold {value:.4g} lies far outside the normal scores "
                                      f"[{scores.min():.4g}, {scores.max():.4g}]")
    return value, params, ""


def fit_threshold(
    normal_scores: Sequence[float] | np.ndarray,
    method: str = "gamma",
    percentile: float = 90.0,
) -> ThresholdFit:
    """Fit a decision threshold from the anomaly scores of normal clips only.

    Args:
        normal_scores: clip scores of normal clips (training or held-out validation), never test clips.
        method: "gamma" (DCASE convention: ``scipy.stats.gamma.fit`` then ``ppf(percentile / 100)``) or
            "percentile" (empirical ``np.percentile``).
        percentile: percentile in (0, 100); DCASE uses 90.

    Returns:
        A :class:`ThresholdFit`. Non-finite scores are dropped (noted). If a gamma fit is not sensible
        (fewer than 3 scores, negative or constant scores) or fails, the empirical percentile is used and
        ``note`` says why.

    Raises:
        ValueError: unknown method, percentile outside (0, 100), or no finite score at all.
    """
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {METHODS}")
    if not 0.0 < float(percentile) < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    raw = np.asarray(normal_scores, dtype=np.float64).ravel()
    scores = raw[np.isfinite(raw)]
    if scores.size == 0:
        raise ValueError("cannot fit a threshold: no finite normal scores")
    notes = []
    if scores.size < raw.size:
        notes.append(f"dropped {raw.size - scores.size} non-finite score(s)")

    if method == "gamma":
        problem = _gamma_problem(scores)
        if not problem:
            value, params, problem = _fit_gamma(scores, float(percentile) / 100.0)
            if not problem:
                return ThresholdFit(value, "gamma", float(percentile), params, int(scores.size),
                                    "; ".join(notes))
        notes.append(f"{problem}; fell back to the empirical percentile")

    value = float(np.percentile(scores, percentile))
    return ThresholdFit(value, "percentile", float(percentile), (), int(scores.size), "; ".join(notes))


def false_alarm_rate(normal_scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Share of normal clips flagged anomalous (``score > threshold``); NaN when there are no scores.

    This is the one quality figure that stays honestly measurable when the test set is unlabelled: compute
    it on held-out *normal* clips that the threshold was not fitted on.
    """
    scores = np.asarray(normal_scores, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float("nan")
    return float(np.mean(scores > float(threshold)))


def cross_fitted_false_alarm_rate(normal_scores: np.ndarray, method: str, percentile: float, seed: int) -> float:
    """False-alarm rate of the threshold rule on normal clips it was not fitted on: fit on one half of the
    held-out normal scores, count alarms on the other half, and the other way round (NaN below 4 clips).

    Measuring on the clips the threshold was fitted on would return about 100 - percentile by construction.
    """
    normal = np.asarray(normal_scores, dtype=np.float64)
    if len(normal) < 4:
        return float("nan")
    order = np.random.default_rng(seed).permutation(len(normal))
    halves = (normal[order[: len(normal) // 2]], normal[order[len(normal) // 2:]])
    rates = []
    for fit_on, check_on in (halves, halves[::-1]):
        fit = fit_threshold(fit_on, method=method, percentile=percentile)
        rates.append(false_alarm_rate(check_on, fit.value))
    return float(np.mean(rates))


POOLED = "*"  # a threshold over every section (or both domains)


def wilson_interval(alarms: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``alarms / n`` (NaN, NaN without clips)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = alarms / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fit_threshold_table(scores: np.ndarray, sections: np.ndarray, domains: np.ndarray, method: str = "gamma",
                        percentile: float = 90.0, min_clips: int = 20, seed: int = 0) -> list[dict]:
    """Thresholds from the calibrated out-of-fold scores of normal training clips, one row per key.

    Keys: ``"*"`` pooled over sections, every section, and every section x domain its clips have (where
    the file names carry no domain, "unknown" clips count as source). A key with fewer than ``min_clips``
    scores takes the threshold of the next broader key (section x domain -> section -> ``"*"``), which the
    calibration makes comparable, and ``fitted_on`` says so: a gamma fit on ten target clips would mostly
    measure chance. Each row carries the expected false-alarm rate on normal clips the rule was *not*
    fitted on (the clips split in two halves: fitted on one, counted on the other, both ways) and its 95 %
    Wilson interval.
    """
    scores = np.asarray(scores, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    domains = np.where(np.asarray(domains).astype(str) == "target", "target", "source")
    halves = np.random.default_rng(seed).permutation(len(scores)) % 2

    def members(section: str, domain: str) -> np.ndarray:
        return ((sections == section) if section != POOLED else np.ones(len(scores), bool)) & \
            ((domains == domain) if domain != POOLED else True)

    keys = [(POOLED, POOLED)]
    for section in sorted(set(sections.tolist())):
        keys.append((section, POOLED))
        keys += [(section, d) for d in ("source", "target") if members(section, d).any()]
    rows = []
    for section, domain in keys:
        source = (section, domain)
        while members(*source).sum() < min_clips and source != (POOLED, POOLED):
            source = (source[0], POOLED) if source[1] != POOLED else (POOLED, POOLED)
        pool, mine = members(*source), members(section, domain)
        fit = fit_threshold(scores[pool], method=method, percentile=percentile)
        alarms = counted = 0
        for half in (0, 1):
            fit_on, count_on = pool & (halves != half), mine & (halves == half)
            if np.isfinite(scores[fit_on]).sum() >= 2 and count_on.any():
                value = fit_threshold(scores[fit_on], method=method, percentile=percentile).value
                alarms += int(np.sum(scores[count_on] > value))
                counted += int(count_on.sum())
        low, high = wilson_interval(alarms, counted)
        whose = ("its own" if source == (section, domain) else
                 "its section's" if source[0] == section else "every section's")
        own = scores[mine][np.isfinite(scores[mine])]
        rows.append({"section": section, "domain": domain, "threshold": fit.value, "method": fit.method,
                     "percentile": fit.percentile, "n_normal_clips": int(mine.sum()),
                     "oof_median": float(np.median(own)) if len(own) else float("nan"),
                     "oof_p90": float(np.percentile(own, 90)) if len(own) else float("nan"),
                     "fitted_on": f"{whose} {int(pool.sum())} out-of-fold normal clip scores",
                     "expected_false_alarm_rate": alarms / counted if counted else float("nan"),
                     "false_alarm_low": low, "false_alarm_high": high, "note": fit.note,
                     "fit": fit.to_dict()})
    return rows
