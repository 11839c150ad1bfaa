"""Tests for the selective Mahalanobis scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from asd.models.mahalanobis import MahalanobisScorer


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.normal(0.0, 1.0, size=(500, 6)) @ rng.normal(size=(6, 6))
    tgt = rng.normal(5.0, 0.5, size=(10, 6))
    return np.vstack([src, tgt]), np.array(["source"] * 500 + ["target"] * 10)


def test_distances_match_scipy() -> None:
    x, dom = _data()
    scorer = MahalanobisScorer(dtype="float64").fit(x, dom)
    assert scorer.domains_.tolist() == ["source", "target"]
    queries = np.random.default_rng(1).normal(size=(7, 6))
    per = scorer.score_per_domain(queries)
    per32 = MahalanobisScorer().fit(x, dom).score_per_domain(queries)  # the fast default: float32 Cholesky
    for i, name in enumerate(scorer.domains_):
        expected = [mahalanobis(q, scorer.means_[i], scorer.precisions_[i]) for q in queries]
        np.testing.assert_allclose(per[name], expected, rtol=1e-9)
        np.testing.assert_allclose(per32[name], expected, rtol=1e-5)
        # precision is the inverse of the stored (regularised) covariance
        np.testing.assert_allclose(scorer.precisions_[i] @ scorer.covariances_[i], np.eye(6), atol=1e-8)


def test_selective_min_picks_nearer_domain() -> None:
    x, dom = _data()
    scorer = MahalanobisScorer().fit(x, dom)
    near_target = np.full((1, 6), 5.0)
    per = scorer.score_per_domain(near_target)
    assert per["target"][0] < per["source"][0]
    assert scorer.score(near_target)[0] == pytest.approx(per["target"][0])
    near_source = x[:3]
    per = scorer.score_per_domain(near_source)
    np.testing.assert_allclose(scorer.score(near_source), np.minimum(per["source"], per["target"]))
    assert (per["source"] < per["target"]).all()


def test_ten_target_samples_in_640_dims_is_finite() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(210, 640))
    dom = np.array(["source"] * 200 + ["target"] * 10)
    scorer = MahalanobisScorer().fit(x, dom)
    assert np.isfinite(np.linalg.cond(scorer.covariances_[1]))
    scores = scorer.score(rng.normal(size=(20, 640)))
    assert scores.shape == (20,) and np.isfinite(scores).all() and (scores > 0).all()


def test_constant_errors_do_not_crash() -> None:
    scorer = MahalanobisScorer().fit(np.zeros((10, 4)))
    assert scorer.domains_.tolist() == ["source"]
    assert np.isfinite(scorer.score(np.ones((2, 4)))).all()


def test_tiny_domain_skipped_and_state_roundtrip(tmp_path) -> None:
    x, dom = _data()
    dom[-10:] = "source"
    dom[-1] = "target"  # one row: below min_samples, ignored
    scorer = MahalanobisScorer().fit(x, dom)
    assert scorer.domains_.tolist() == ["source"]
    np.savez(tmp_path / "m.npz", **scorer.state_dict())
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        restored = MahalanobisScorer.from_state(dict(f))
    q = x[:5] + 0.3
    np.testing.assert_array_equal(restored.score(q), scorer.score(q))


def test_chunking_does_not_change_scores() -> None:
    x, dom = _data()
    for dtype, rtol in (("float64", 1e-12), ("float32", 1e-6)):
        a = MahalanobisScorer(chunk_size=3, dtype=dtype).fit(x, dom).score(x[:50])
        b = MahalanobisScorer(chunk_size=10_000, dtype=dtype).fit(x, dom).score(x[:50])
        np.testing.assert_allclose(a, b, rtol=rtol)


def test_float32_cholesky_equals_float64_at_dcase_size() -> None:
    """The fast scorer (float32, one triangular solve per batch) within 1e-4 relative of the float64
    quadratic form, on 640-d correlated errors like the autoencoder's, with a 10-clip-sized target domain."""
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(640, 640)) / 25 + np.eye(640)
    scale = np.exp(rng.normal(0, 1, 640))  # per-dimension spread of about +-3 orders of magnitude in variance
    source = (rng.normal(size=(1500, 640)) @ mixing) * scale
    target = (rng.normal(size=(280, 640)) @ mixing) * scale + 2.0
    x = np.vstack([source, target]).astype(np.float32)
    dom = np.array(["source"] * len(source) + ["target"] * len(target))
    exact = MahalanobisScorer(dtype="float64").fit(x, dom)
    fast = MahalanobisScorer.from_state(exact.state_dict())  # float32 by default
    queries = np.vstack([source[:200] * 1.5, target[:50]]).astype(np.float32)
    d64 = exact.distances(queries).numpy()
    d32 = fast.distances(torch.from_numpy(queries)).numpy()
    assert d32.dtype == np.float32 and d64.dtype == np.float64
    np.testing.assert_allclose(d32, d64, rtol=1e-4)
    np.testing.assert_allclose(fast.score(queries), exact.score(queries), rtol=1e-4)


def test_unfitted_raises() -> None:
    with pytest.raises(RuntimeError):
        MahalanobisScorer().score(np.zeros((1, 2)))


def test_streamed_ledoit_wolf_equals_scikit_learn() -> None:
    from sklearn.covariance import LedoitWolf

    x, dom = _data()
    scorer = MahalanobisScorer(chunk_size=37, ridge=0.0).fit(x, dom)  # streamed in chunks of 37 rows
    for i, name in enumerate(["source", "target"]):
        reference = LedoitWolf().fit(x[dom == name])
        np.testing.assert_allclose(scorer.means_[i], reference.location_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scorer.shrinkages_[i], reference.shrinkage_, rtol=1e-8)
        np.testing.assert_allclose(scorer.covariances_[i], reference.covariance_, rtol=1e-8, atol=1e-10)
