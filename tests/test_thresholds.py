"""Thresholds fitted from normal scores: the DCASE gamma fit, its fallbacks, and the false-alarm rate."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from asd.evaluation.thresholds import ThresholdFit, cross_fitted_false_alarm_rate, false_alarm_rate, fit_threshold


def test_gamma_fit_recovers_true_90th_percentile() -> None:
    true = scipy.stats.gamma(a=2.5, loc=0.0, scale=1.3)
    scores = true.rvs(size=5000, random_state=np.random.default_rng(7))
    fit = fit_threshold(scores, method="gamma", percentile=90.0)
    assert fit.method == "gamma"
    assert fit.note == ""
    assert len(fit.params) == 3
    assert fit.n_scores == 5000
    assert fit.value == pytest.approx(true.ppf(0.9), rel=0.03)
    # Same recipe as the baselines: gamma.fit on the scores, then ppf at the percentile.
    shape, loc, scale = scipy.stats.gamma.fit(scores)
    assert fit.value == pytest.approx(scipy.stats.gamma.ppf(0.9, shape, loc=loc, scale=scale), rel=1e-9)


def test_other_percentile_is_honoured() -> None:
    scores = scipy.stats.gamma(a=3.0).rvs(size=4000, random_state=np.random.default_rng(1))
    fit = fit_threshold(scores, percentile=99.0)
    assert fit.percentile == 99.0
    assert fit.value == pytest.approx(scipy.stats.gamma(a=3.0).ppf(0.99), rel=0.05)
    assert fit.value > fit_threshold(scores, percentile=90.0).value


@pytest.mark.parametrize(
    ("scores", "reason"),
    [
        ([-1.0, 0.5, 2.0, 3.0, 0.1, 1.2], "negative"),
        ([2.0, 2.0, 2.0, 2.0, 2.0], "equal"),
        ([0.4, 0.9], "only 2"),
        ([0.7], "only 1"),
    ],
)
def test_gamma_fallbacks_use_empirical_percentile(scores: list[float], reason: str) -> None:
    fit = fit_threshold(scores, method="gamma", percentile=90.0)
    assert fit.method == "percentile"
    assert fit.value == np.percentile(scores, 90.0)
    assert reason in fit.note
    assert "fell back" in fit.note
    assert fit.params == ()


def test_failed_or_nan_gamma_fit_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.linspace(0.1, 2.0, 50)

    def boom(*_args, **_kwargs):
        raise RuntimeError("optimizer did not converge")

    monkeypatch.setattr(scipy.stats.gamma, "fit", boom)
    fit = fit_threshold(scores)
    assert fit.method == "percentile"
    assert "failed" in fit.note and "RuntimeError" in fit.note
    assert fit.value == np.percentile(scores, 90.0)

    monkeypatch.setattr(scipy.stats.gamma, "fit", lambda *_a, **_k: (np.nan, 0.0, 1.0))
    fit = fit_threshold(scores)
    assert fit.method == "percentile"
    assert "non-finite" in fit.note


def test_percentile_method_and_non_finite_scores() -> None:
    scores = [0.1, 0.5, np.nan, 0.3, np.inf, 0.9, 0.2]
    fit = fit_threshold(scores, method="percentile", percentile=80.0)
    finite = [0.1, 0.5, 0.3, 0.9, 0.2]
    assert fit.method == "percentile"
    assert fit.value == np.percentile(finite, 80.0)
    assert fit.n_scores == 5
    assert "dropped 2 non-finite" in fit.note


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="method"):
        fit_threshold([1.0, 2.0, 3.0], method="median")
    with pytest.raises(ValueError, match="percentile"):
        fit_threshold([1.0, 2.0, 3.0], percentile=100.0)
    with pytest.raises(ValueError, match="no finite"):
        fit_threshold([np.nan, np.inf])


def test_threshold_fit_round_trips_through_dict() -> None:
    fit = fit_threshold(np.random.default_rng(3).gamma(2.0, size=200))
    again = ThresholdFit.from_dict(fit.to_dict())
    assert again == fit
    with pytest.raises(AttributeError):
        fit.value = 0.0  # frozen


def test_false_alarm_rate_uses_strictly_greater() -> None:
    normal = [1.0, 2.0, 3.0, 4.0]
    assert false_alarm_rate(normal, 2.0) == 0.5  # the clip at exactly 2.0 is not a false alarm
    assert false_alarm_rate(normal, 0.0) == 1.0
    assert false_alarm_rate(normal, 4.0) == 0.0
    assert np.isnan(false_alarm_rate([], 1.0))


def test_false_alarm_rate_is_measured_on_clips_the_threshold_did_not_see() -> None:
    normal = np.random.default_rng(0).gamma(2.0, 1.0, 2000)
    assert cross_fitted_false_alarm_rate(normal, "percentile", 90.0, seed=0) == pytest.approx(0.10, abs=0.02)
    assert np.isnan(cross_fitted_false_alarm_rate(normal[:3], "percentile", 90.0, seed=0))
    # the four highest scores in one half, the lowest in the other: out-of-sample alarms are not 10%
    skewed = np.array([1.0, 1.1, 1.2, 1.3, 9.0, 9.1, 9.2, 9.3])
    assert cross_fitted_false_alarm_rate(skewed, "percentile", 90.0, seed=3) != pytest.approx(0.10, abs=0.05)


def test_gamma_threshold_gives_about_ten_percent_false_alarms_on_fresh_normals() -> None:
    dist = scipy.stats.gamma(a=4.0, scale=0.5)
    rng = np.random.default_rng(11)
    fit = fit_threshold(dist.rvs(size=3000, random_state=rng))
    far = false_alarm_rate(dist.rvs(size=20000, random_state=rng), fit.value)
    assert far == pytest.approx(0.10, abs=0.015)


def test_gamma_fit_that_does_not_describe_the_scores_falls_back() -> None:
    rng = np.random.default_rng(0)
    # a tight cluster plus one outlier: a free gamma fit does not describe it
    scores = np.concatenate([rng.normal(0.09, 0.005, 30), [0.2]])
    fit = fit_threshold(scores, method="gamma", percentile=90.0)
    assert fit.method == "percentile" and "does not describe" in fit.note
    assert fit.value == pytest.approx(np.percentile(scores, 90.0))
    assert scores.min() <= fit.value <= scores.max()


def test_gamma_fit_that_describes_the_scores_is_kept() -> None:
    scores = np.random.default_rng(1).gamma(2.0, 1.0, 300)
    fit = fit_threshold(scores, method="gamma", percentile=90.0)
    assert fit.method == "gamma" and fit.note == ""
