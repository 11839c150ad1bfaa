"""The statistical detector: GWRP pooling, the diagonal mixture, the detector end to end on synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from asd.cache.shard import Shard
from asd.models.base import FitConfig
from asd.models.checkpoint import load_detector, save_detector
from asd.models.gmm import (
    DiagonalGmm,
    GmmDetector,
    GmmDetectorConfig,
    _fit_groups,
    domain_nll,
    out_of_fold_nll,
    pooled_group_variance,
)
from asd.models.pooling import _frames_of_clip, gwrp_pool, gwrp_weights
from asd.models.registry import make_detector
from conftest import prepared_synthetic_machine


def test_gwrp_r1_is_the_mean_and_r0_the_max() -> None:
    frames = np.random.default_rng(0).normal(size=(6, 40))
    pooled = gwrp_pool(frames, (1.0, 0.0))
    np.testing.assert_allclose(pooled[0], frames.mean(axis=1))
    np.testing.assert_allclose(pooled[1], frames.max(axis=1))


def test_gwrp_intermediate_r_weights_the_loudest_frames_most() -> None:
    weights = gwrp_weights(5, 0.5)
    np.testing.assert_allclose(weights, np.array([16, 8, 4, 2, 1]) / 31)
    frames = np.array([[0.0, 3.0, 1.0, 2.0, 4.0]])
    assert gwrp_pool(frames, (0.5,))[0, 0] == pytest.approx((16 * 4 + 8 * 3 + 4 * 2 + 2 * 1 + 0) / 31)
    with pytest.raises(ValueError, match="r must lie in"):
        gwrp_weights(5, 1.5)


def test_overlapping_segments_count_each_frame_once() -> None:
    """Segments of 4 frames at starts 0, 2 and 5 hops: frames 0..8 of the clip, each exactly once."""
    clip = np.arange(9, dtype=np.float32)[None, :].repeat(2, axis=0)  # [n_mels=2, 9 frames]
    starts_in_frames = [0, 2, 5]
    mels = np.stack([clip[:, s:s + 4] for s in starts_in_frames])
    joined = _frames_of_clip(mels, np.array(starts_in_frames))
    np.testing.assert_array_equal(joined, clip)


def test_diagonal_mixture_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (60, 5)), rng.normal(6, 2, (60, 5))])
    ours = DiagonalGmm.fit(x, max_components=4, min_clips_per_component=4, reg_covar=1e-3, seed=0)
    reference = GaussianMixture(ours.n_components, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(x)
    np.testing.assert_allclose(ours.log_likelihood(x), reference.score_samples(x), rtol=1e-9)
    assert ours.n_components >= 2  # BIC sees the two clusters


def test_a_clip_from_the_fitted_distribution_scores_lower_than_one_far_from_it() -> None:
    rng = np.random.default_rng(2)
    n, d = 80, 8
    features = rng.normal(0, 1, (n, 2, d))  # two poolings
    sections = np.array(["00"] * n)
    domains = np.where(np.arange(n) < 70, "source", "target")
    features[domains == "target"] += 3.0  # the target domain sits elsewhere
    detector = GmmDetector(GmmDetectorConfig(poolings=(0.0, 1.0), folds=4))
    from asd.models.calibration import DomainCalibration
    from asd.models.gmm import _fit_groups, domain_nll

    detector.poolings_ = (0.0, 1.0)
    for i in range(2):
        models = _fit_groups(features[:, i], sections, domains, detector.config, seed=0)
        detector.models_.append(models)
        raw = domain_nll(models, features[:, i], sections)  # in-sample: enough for this ordering
        detector.calibrations_.append(DomainCalibration(5).fit(raw, sections, domains))
    typical_source = np.zeros((1, 2, d))
    typical_target = np.full((1, 2, d), 3.0)
    far = np.full((1, 2, d), -6.0)
    one_view_off = np.zeros((1, 2, d))
    one_view_off[0, 1] = 8.0  # normal under r=0, far off under r=1: the larger surprise wins
    clips = np.concatenate([typical_source, typical_target, far, one_view_off])
    scores = detector.score_views([clips[:, 0], clips[:, 1]], np.array(["00"] * 4))
    assert scores[2] > max(scores[0], scores[1]) + 5
    assert scores[3] > max(scores[0], scores[1]) + 5
    assert (scores > 0).all()  # surprises are positive: the DCASE gamma threshold applies


def test_variances_are_shrunk_towards_the_within_group_spread_not_the_gap_between_groups() -> None:
    rng = np.random.default_rng(5)
    sections = np.repeat(["00", "01"], 300)
    domains = np.tile(np.repeat(["source", "target"], 150), 2)
    features = rng.normal(0, 2.0, (600, 3))
    features[domains == "target"] += 50.0  # a domain shift must not count as normal variation
    features[sections == "01"] -= 80.0
    prior = pooled_group_variance(features, sections, domains, reg_covar=0.0)
    np.testing.assert_allclose(prior, 4.0, rtol=0.15)


def test_fit_size_correction_brings_out_of_fold_scores_to_the_full_fit_of_unseen_clips() -> None:
    """Five clips per section, as in MIMII: a refit on four clips scores its held-out clip worse than the
    final fit on five scores a new clip; the correction removes a good part of that gap, never overshooting."""
    rng = np.random.default_rng(6)
    d, per_section = 12, 5
    sections = np.repeat(["00", "01", "02", "03", "04", "05"], per_section)
    domains = np.array(["source"] * len(sections))
    gaps = {True: [], False: []}
    for trial in range(6):
        scale = rng.uniform(0.5, 2.0, d)
        features, fresh = rng.normal(0, 1, (len(sections), d)) * scale, rng.normal(0, 1, (400, d)) * scale
        for corrected in (True, False):
            cfg = GmmDetectorConfig(folds=5, fit_size_correction=corrected)
            components = {(s, "source"): 1 for s in np.unique(sections)}
            oof = out_of_fold_nll(features, sections, domains, cfg, trial, components)
            models = _fit_groups(features, sections, domains, cfg, trial, components)
            unseen = domain_nll(models, fresh, np.array(["00"] * len(fresh)))[:, 0]
            gaps[corrected].append(np.median(oof[sections == "00"]) - np.median(unseen))
    raw_gap, corrected_gap = np.mean(gaps[False]), np.mean(gaps[True])
    assert raw_gap > 0.5  # the problem exists (here about 1.2 nats)
    assert 0.0 < corrected_gap < 0.75 * raw_gap, (raw_gap, corrected_gap)  # about half of it removed, no overshoot


@pytest.fixture(scope="module")
def fan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_synthetic_machine(tmp_path_factory, "fan", scale=0.3, anomaly_strength=3.0)


def _fit(machine_dir: Path, seed: int = 0) -> GmmDetector:
    shard = Shard(machine_dir / "train.h5")
    normal = shard.clips[shard.clips["label"] != "anomaly"]
    train = FitConfig(seed=seed, device="cpu")
    return make_detector("gmm").fit(shard, normal.index.to_numpy(), train, log=lambda line: None)


def test_detector_beats_chance_and_round_trips(fan: Path, tmp_path: Path) -> None:
    detector = _fit(fan)
    test = Shard(fan / "test.h5")
    scores = detector.score_clips(test, device="cpu")
    labels = (test.clips.loc[scores.index, "label"] == "anomaly").to_numpy()
    assert roc_auc_score(labels, scores.to_numpy()) > 0.75
    save_detector(detector, tmp_path / "model.pt")
    restored = load_detector(tmp_path / "model.pt")
    np.testing.assert_allclose(restored.score_clips(test, device="cpu").to_numpy(), scores.to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(_fit(fan).score_clips(test, device="cpu").to_numpy(), scores.to_numpy())


def test_out_of_fold_thresholds_flag_about_the_aimed_share_of_unseen_normal_clips(fan: Path) -> None:
    """The calibration's point: thresholds fitted on out-of-fold scores of the training clips flag about
    10 % of normal clips the model never saw, in each domain (in-sample scores would flag far more)."""
    from asd.engine.config import RunConfig
    from asd.engine.train import fit_thresholds

    detector = _fit(fan)
    rows = fit_thresholds(detector, RunConfig(model="gmm", threshold_method="percentile"))
    assert {(r["section"], r["domain"]) for r in rows} >= {("*", "*"), ("00", "source")}
    test = Shard(fan / "test.h5")
    normal = test.clips[test.clips["label"] == "normal"]
    scores = detector.score_clips(test, normal.index.to_numpy(), device="cpu").to_numpy()
    _, flagged = detector.decisions(scores, normal["section"].to_numpy(), normal["domain"].to_numpy())
    assert 0.0 < flagged.mean() < 0.3, flagged.mean()
    train = Shard(fan / "train.h5")
    in_sample = detector.score_clips(train, train.clips.index[train.clips["label"] != "anomaly"].to_numpy())
    assert np.median(in_sample) < np.median(detector.decision_scores_["score"])  # seen clips look more normal


def test_a_checkpoint_from_before_the_spectrum_views_scores_with_its_log_mel_views_alone(fan: Path) -> None:
    shard = Shard(fan / "train.h5")
    normal = shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()
    mel_only = GmmDetector(GmmDetectorConfig(spectrum_poolings=())).fit(shard, normal, FitConfig(seed=0),
                                                                       log=lambda line: None)
    state = mel_only._state()
    del state["spectrum_poolings"], state["spectrum_n_fft"]  # what an older checkpoint holds
    old = GmmDetector()  # today's config: a spectrum view; the state decides what was fitted
    old._load_state(state)
    assert old.spectrum_poolings_ == () and old.view_names() == [f"log-mel r={r:g}" for r in old.poolings_]
    test = Shard(fan / "test.h5")
    np.testing.assert_array_equal(old._score(test, test.clips.index.to_numpy(), "cpu"),
                                  mel_only._score(test, test.clips.index.to_numpy(), "cpu"))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="poolings"):
        GmmDetectorConfig(poolings=(0.0, 2.0))
    with pytest.raises(ValueError, match="folds"):
        GmmDetectorConfig(folds=1)
