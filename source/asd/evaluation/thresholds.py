"""Decision thresholds learned from the anomaly scores of normal clips only.

DCASE Task 2 decides "anomalous" when a clip's score is strictly greater than a threshold. The reference
baselines fit a gamma distribution (shape, loc and scale all free) to the scores of *normal* clips and take
the threshold at its 90th percentile. Test labels must never be used here: thresholds come from normal
training or held-out normal validation clips, split by clip.

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
