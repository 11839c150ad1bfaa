"""Calibration by construction: per-section, per-domain standardisation on out-of-fold scores, the
combination of fold networks, and thresholds (with their expected false-alarm rate) fitted on the result."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from asd.evaluation.thresholds import fit_threshold_table, wilson_interval
from asd.models.calibration import ALL_SECTIONS, DomainCalibration, fit_size_gap
from asd.models.fold_networks import FoldCalibration, assign_folds


def _two_domains(rng: np.random.Generator, n_source: int, n_target: int) -> tuple[np.ndarray, ...]:
    """Raw scores [n, 2] of one section: source clips near 1 (sd 0.1) in the source column, target clips
    near 5 (sd 0.1) in the target column; each clip's other column is far off (not its domain)."""
    source = np.column_stack([rng.normal(1.0, 0.1, n_source), rng.normal(9.0, 0.1, n_source)])
    target = np.column_stack([rng.normal(9.0, 0.1, n_target), rng.normal(5.0, 0.1, n_target)])
    domains = np.array(["source"] * n_source + ["target"] * n_target)
    return np.concatenate([source, target]), np.array(["00"] * (n_source + n_target)), domains


def test_each_domain_is_standardised_with_its_own_out_of_fold_figures() -> None:
    rng = np.random.default_rng(0)
    raw, sections, domains = _two_domains(rng, 400, 40)
    calibration = DomainCalibration(min_clips_for_sd=20).fit(raw, sections, domains)
    mean_s, sd_s, n_s = calibration.stats_[("00", "source")]
    mean_t, _, n_t = calibration.stats_[("00", "target")]
    assert (n_s, n_t) == (400, 40) and mean_s == pytest.approx(1.0, abs=0.02) and mean_t == pytest.approx(5.0, abs=0.05)
    assert sd_s == pytest.approx(0.1, rel=0.15)
    new, _, new_domains = _two_domains(rng, 1000, 1000)
    z = calibration.transform(new, np.array(["00"] * 2000))
    # a normal clip of either domain lands near zero; 10 % of each domain lies above the 90th percentile
    threshold = np.percentile(z, 90)
    for domain in ("source", "target"):
        assert np.median(z[new_domains == domain]) == pytest.approx(0.0, abs=0.15)
        assert np.mean(z[new_domains == domain] > threshold) == pytest.approx(0.10, abs=0.04)
    # the smallest z over the domains: a clip far from both is anomalous whatever its domain
    assert calibration.transform(np.array([[3.0, 7.0]]), np.array(["00"]))[0] > 15


def test_few_target_clips_borrow_the_source_spread_and_unknown_sections_use_the_pooled_figures() -> None:
    rng = np.random.default_rng(1)
    raw, sections, domains = _two_domains(rng, 200, 6)
    calibration = DomainCalibration(min_clips_for_sd=20).fit(raw, sections, domains)
    _, sd_s, _ = calibration.stats_[("00", "source")]
    mean_t, sd_t, n_t = calibration.stats_[("00", "target")]
    assert n_t == 6 and sd_t == sd_s and mean_t == pytest.approx(5.0, abs=0.1)  # own mean, borrowed sd
    assert (ALL_SECTIONS, "source") in calibration.stats_
    unseen = calibration.transform(raw[:3], np.array(["07"] * 3))
    np.testing.assert_allclose(unseen, calibration.transform(raw[:3], np.array([ALL_SECTIONS] * 3)))
    again = DomainCalibration.from_state(calibration.state())
    assert again.stats_ == calibration.stats_ and again.table() == calibration.table()


def test_a_relative_spread_scales_the_borrowed_spread_to_the_borrowers_level() -> None:
    """Distances to the few target clips are ten times smaller than those to the source bank and spread ten
    times less: borrowed as it is, the source spread hides every target clip; borrowed relative to the
    target's mean, as many fresh target clips as source clips lie above z = 1.28 (about a tenth)."""
    rng = np.random.default_rng(2)

    def distances(n_source: int, n_target: int) -> tuple[np.ndarray, np.ndarray]:
        source = np.column_stack([rng.gamma(16.0, 1.0 / 16, n_source), np.full(n_source, 9.0)])
        target = np.column_stack([np.full(n_target, 9.0), rng.gamma(16.0, 0.1 / 16, n_target)])
        return np.concatenate([source, target]), np.array(["source"] * n_source + ["target"] * n_target)

    # 400 target clips (fewer than min_clips_for_sd, so they borrow): their mean is not what is tested here
    raw, domains = distances(4000, 400)
    sections = np.array(["00"] * len(raw))
    relative = DomainCalibration(min_clips_for_sd=1000, relative_spread=True).fit(raw, sections, domains)
    absolute = DomainCalibration(min_clips_for_sd=1000).fit(raw, sections, domains)
    mean_s, sd_s, _ = relative.stats_[("00", "source")]
    mean_t, sd_t, _ = relative.stats_[("00", "target")]
    assert sd_t == pytest.approx(sd_s * mean_t / mean_s) and absolute.stats_[("00", "target")][1] == sd_s
    fresh, fresh_domains = distances(4000, 4000)
    fresh_sections = np.array(["00"] * len(fresh))
    target = fresh_domains == "target"
    z = relative.transform(fresh, fresh_sections)
    source_share, target_share = np.mean(z[~target] > 1.28), np.mean(z[target] > 1.28)
    assert 0.05 < source_share < 0.2 and target_share == pytest.approx(source_share, abs=0.04)
    assert np.mean(absolute.transform(fresh, fresh_sections)[target] > 1.28) < 0.01
    # the setting travels with the checkpoint; a state written before it existed borrows as it is
    state = relative.state()
    assert DomainCalibration.from_state(state).relative_spread
    del state["relative_spread"]
    assert not DomainCalibration.from_state(state).relative_spread


def test_a_small_domain_keeps_its_own_spread_where_it_is_the_wider_one() -> None:
    """Ten target clips whose scores spread three times wider than the source's: borrowed, the source
    spread flags a third of fresh target clips at z = 1.28; kept, about a tenth. Where the target's own
    spread is the narrower one, or rests on fewer than five scores, the borrowed spread stays."""
    rng = np.random.default_rng(3)

    def scores(n_source: int, n_target: int, target_sd: float) -> tuple[np.ndarray, np.ndarray]:
        """Target scores at evenly spaced quantiles: ten random draws would make their spread a lottery."""
        source = np.column_stack([rng.normal(1.0, 0.1, n_source), np.full(n_source, 99.0)])
        quantiles = scipy.stats.norm.ppf((np.arange(n_target) + 0.5) / n_target)
        target = np.column_stack([np.full(n_target, 99.0), 5.0 + target_sd * quantiles])
        return np.concatenate([source, target]), np.array(["source"] * n_source + ["target"] * n_target)

    raw, domains = scores(990, 10, 0.3)
    sections = np.array(["00"] * len(raw))
    wider = DomainCalibration(min_clips_for_sd=20, wider_own_spread=True).fit(raw, sections, domains)
    borrowed = DomainCalibration(min_clips_for_sd=20).fit(raw, sections, domains)
    own_sd = np.std(raw[domains == "target", 1], ddof=1)
    assert wider.stats_[("00", "target")][1] == pytest.approx(own_sd)
    assert borrowed.stats_[("00", "target")][1] == borrowed.stats_[("00", "source")][1] < own_sd / 2
    assert wider.stats_[("00", "source")] == borrowed.stats_[("00", "source")]
    fresh, fresh_domains = scores(0, 4000, 0.3)
    fresh_sections = np.array(["00"] * len(fresh))
    assert 0.03 < np.mean(wider.transform(fresh, fresh_sections) > 1.28) < 0.25
    assert np.mean(borrowed.transform(fresh, fresh_sections) > 1.28) > 0.3
    for n_target, target_sd in ((10, 0.03), (4, 0.3)):  # narrower, or too few scores: borrowed as before
        raw, domains = scores(990, n_target, target_sd)
        calibration = DomainCalibration(min_clips_for_sd=20, wider_own_spread=True).fit(raw, sections[:len(raw)],
                                                                                         domains)
        assert calibration.stats_[("00", "target")][1] == calibration.stats_[("00", "source")][1]
    state = wider.state()
    assert DomainCalibration.from_state(state).wider_own_spread
    del state["wider_own_spread"]  # a checkpoint from before the setting
    assert not DomainCalibration.from_state(state).wider_own_spread


def test_small_sections_take_the_median_and_the_spread_pooled_over_sections() -> None:
    """Five clips per machine ID (MIMII): one odd clip must neither set its section's spread nor drag
    its centre; the spread comes from every section's clips around their own centre."""
    raw_source = np.array([10.0, 11.0, 12.0, 13.0, 40.0,  # one odd clip
                           100.0, 101.0, 102.0, 103.0, 104.0,
                           50.0, 52.0, 54.0, 56.0, 58.0])
    raw = np.column_stack([raw_source, np.full(15, np.inf)])
    sections = np.repeat(["00", "02", "04"], 5)
    calibration = DomainCalibration(min_clips_for_sd=20).fit(raw, sections, np.array(["source"] * 15))
    centres = {s: calibration.stats_[(s, "source")][0] for s in ("00", "02", "04")}
    assert centres == {"00": 12.0, "02": 102.0, "04": 54.0}
    groups = [raw_source[:5], raw_source[5:10], raw_source[10:]]
    pooled = np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / 12)
    assert [calibration.stats_[(s, "source")][1] for s in ("00", "02", "04")] == pytest.approx([pooled] * 3)
    # a large section keeps its own mean and spread
    big = DomainCalibration(min_clips_for_sd=5).fit(raw, sections, np.array(["source"] * 15))
    assert big.stats_[("00", "source")][:2] == (pytest.approx(17.2), pytest.approx(np.std(raw_source[:5], ddof=1)))


def test_fit_size_gap_extrapolates_one_fold_by_the_inverse_size_law() -> None:
    scores = np.array([10.0, 11.0, 12.0, 13.0, 50.0])
    steps = np.array([1.0, 1.0, 1.0, 1.0, 40.0])  # one heavy tail
    # five folds of 1,000 clips: from 600 to 800 clips the step is 1, from 800 to 1,000 it is (5-2)/5 of it
    assert fit_size_gap(scores, scores + steps, 1000, 800, 600) == pytest.approx(0.6)
    assert fit_size_gap(scores, scores - steps, 1000, 800, 600) == 0.0  # never raises a score
    assert fit_size_gap(scores, scores + steps, 10, 9, 9) == 0.0  # cannot be measured
    assert fit_size_gap(scores, np.full(5, np.nan), 10, 9, 8) == 0.0


def test_folds_are_stratified_and_fold_networks_share_the_out_of_fold_scale() -> None:
    names = np.array(["a"] * 30 + ["b"] * 5)
    folds = assign_folds(names, 2, seed=0)
    assert sorted(np.bincount(folds[:30])) == [15, 15] and sorted(np.bincount(folds[30:])) == [2, 3]
    assert sorted(assign_folds(names, 5, seed=1)[30:]) == [0, 1, 2, 3, 4]  # five clips, five folds: one each
    assert abs(np.bincount(folds)[0] - np.bincount(folds)[1]) <= 1
    # two networks whose raw scores share a clip effect (rho ~ 0.5) plus their own noise
    rng = np.random.default_rng(2)
    n = 4000
    clip_effect = rng.normal(size=n)
    raw = [np.repeat((clip_effect + rng.normal(size=n))[:, None], 2, axis=1) for _ in range(2)]
    sections, domains = np.array(["00"] * n), np.array(["source"] * n)
    folds = assign_folds(domains, 2, seed=0)
    fold_calibration, out_of_fold = FoldCalibration.fit(raw, folds, sections, domains)
    assert fold_calibration.spread == pytest.approx(np.sqrt((1 + 0.5) / 2), abs=0.03)
    combined = fold_calibration.combine(raw, sections)
    assert np.std(out_of_fold) == pytest.approx(1.0, abs=0.05)
    assert np.std(combined) == pytest.approx(1.0, abs=0.05)  # the mean of two is rescaled to the same spread


def test_thresholds_per_section_and_domain_with_fallback_and_expected_false_alarms() -> None:
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(size=300), rng.normal(size=300), rng.normal(size=8)])
    sections = np.array(["00"] * 300 + ["01"] * 300 + ["01"] * 8)
    domains = np.array(["source"] * 600 + ["target"] * 8)
    rows = {(r["section"], r["domain"]): r for r in fit_threshold_table(scores, sections, domains, "percentile",
                                                                          90.0, min_clips=20, seed=0)}
    assert set(rows) == {("*", "*"), ("00", "*"), ("00", "source"), ("01", "*"), ("01", "source"),
                         ("01", "target")}
    target = rows[("01", "target")]
    assert target["threshold"] == rows[("01", "*")]["threshold"] and "section's" in target["fitted_on"]
    assert rows[("00", "source")]["threshold"] == pytest.approx(np.percentile(scores[:300], 90))
    for row in rows.values():
        assert row["false_alarm_low"] <= row["expected_false_alarm_rate"] <= row["false_alarm_high"]
    assert rows[("*", "*")]["expected_false_alarm_rate"] == pytest.approx(0.10, abs=0.03)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-3) and high == pytest.approx(0.1744, abs=1e-3)
