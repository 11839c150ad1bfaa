"""Tests for the k-NN cosine scorer with source/target banks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asd.models.knn import KnnCosineScorer


def _at(*angles: float) -> np.ndarray:
    """Unit 2-D vectors at the given angles (radians); cosine distance = 1 - cos(angle difference)."""
    a = np.asarray(angles)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _d(angle: float) -> float:
    return 1.0 - math.cos(angle)


def test_training_embedding_scores_zero() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 16))
    dom = np.array(["source"] * 40 + ["target"] * 10)
    scorer = KnnCosineScorer().fit(bank, dom)
    np.testing.assert_allclose(scorer.score(bank[[0, 45]]), 0.0, atol=1e-6)
    # scale invariance: cosine ignores the norm
    np.testing.assert_allclose(scorer.score(3.0 * bank[[3]]), 0.0, atol=1e-6)


def test_min_combination_picks_nearer_domain() -> None:
    scorer = KnnCosineScorer().fit(_at(0.0, 0.1), ["source", "source"])
    scorer.fit(np.vstack([_at(0.0, 0.1), _at(1.5)]), ["source", "source", "target"])
    per = scorer.score_per_domain(_at(1.4, 0.3))
    np.testing.assert_allclose(per["source"], [_d(1.3), _d(0.2)], atol=1e-6)
    np.testing.assert_allclose(per["target"], [_d(0.1), _d(1.2)], atol=1e-6)
    np.testing.assert_allclose(scorer.score(_at(1.4, 0.3)), [_d(0.1), _d(0.2)], atol=1e-6)


def test_k_greater_than_one_averages() -> None:
    scorer = KnnCosineScorer(k=2).fit(_at(0.0, 0.2, 1.0))
    np.testing.assert_allclose(scorer.score(_at(0.05)), [(_d(0.05) + _d(0.15)) / 2], atol=1e-6)
    # k larger than a bank uses the whole bank
    big_k = KnnCosineScorer(k=10).fit(_at(0.0, 0.2, 1.0), ["source", "source", "target"])
    per = big_k.score_per_domain(_at(0.0))
    np.testing.assert_allclose(per["source"], [_d(0.2) / 2], atol=1e-6)
    np.testing.assert_allclose(per["target"], [_d(1.0)], atol=1e-6)


def test_normalized_mode_hand_made_case() -> None:
    # dense source bank (neighbours 0.1 rad apart), sparse target bank (0.5 rad apart)
    emb = _at(0.0, 0.1, 0.2, 1.0, 1.5)
    dom = ["source"] * 3 + ["target"] * 2
    query = _at(0.55)  # 0.35 rad from source, 0.45 rad from target
    plain = KnnCosineScorer(combine="min").fit(emb, dom)
    norm = KnnCosineScorer(combine="normalized").fit(emb, dom)
    # leave-one-out 1-NN distances: 1 - cos(0.1) for every source point, 1 - cos(0.5) for every target one
    assert norm.source_scale_ == pytest.approx(_d(0.1), rel=1e-4)  # float32 1 - cos
    assert norm.target_scale_ == pytest.approx(_d(0.5), rel=1e-5)
    assert plain.source_scale_ == 1.0 and plain.target_scale_ == 1.0
    assert plain.score(query)[0] == pytest.approx(_d(0.35), rel=1e-5)  # raw min: source is nearer
    expected = min(_d(0.35) / _d(0.1), _d(0.45) / _d(0.5))  # relative to density: target is nearer
    assert expected == pytest.approx(_d(0.45) / _d(0.5))
    assert norm.score(query)[0] == pytest.approx(expected, rel=1e-4)


def test_normalized_groups_exclude_same_clip() -> None:
    # two clips, each with two identical segments: plain leave-one-out would give scale 0
    emb = _at(0.0, 0.0, 0.3, 0.3)
    with_groups = KnnCosineScorer(combine="normalized").fit(emb, groups=[0, 0, 1, 1])
    assert with_groups.source_scale_ == pytest.approx(_d(0.3), rel=1e-5)
    without = KnnCosineScorer(combine="normalized").fit(emb)
    assert without.source_scale_ == pytest.approx(1e-6)  # floored, not zero
    # a single group cannot be estimated: borrows the other domain's scale
    emb2 = np.vstack([emb, _at(2.0, 2.0)])
    dom = ["source"] * 4 + ["target"] * 2
    borrowed = KnnCosineScorer(combine="normalized").fit(emb2, dom, groups=[0, 0, 1, 1, 2, 2])
    assert borrowed.target_scale_ == pytest.approx(borrowed.source_scale_)


def test_missing_target_bank() -> None:
    for combine in ("min", "normalized"):
        scorer = KnnCosineScorer(combine=combine).fit(_at(0.0, 0.4))
        assert scorer.target_bank_ is None
        per = scorer.score_per_domain(_at(0.1))
        assert list(per) == ["source"]
        assert np.isfinite(scorer.score(_at(0.1, 2.0))).all()
    only_target = KnnCosineScorer().fit(_at(0.0), ["target"])
    assert only_target.source_bank_ is None
    assert only_target.score(_at(0.2))[0] == pytest.approx(_d(0.2), rel=1e-5)


def test_chunked_equals_unchunked_and_state_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 32)).astype(np.float32)
    dom = np.where(np.arange(300) < 280, "source", "target")
    queries = rng.normal(size=(101, 32))
    small = KnnCosineScorer(k=3, combine="normalized", chunk_size=7).fit(bank, dom)
    large = KnnCosineScorer(k=3, combine="normalized", chunk_size=100_000).fit(bank, dom)
    np.testing.assert_allclose(small.score(queries), large.score(queries), rtol=1e-6)
    np.savez(tmp_path / "knn.npz", **small.state_dict())
    with np.load(tmp_path / "knn.npz", allow_pickle=False) as f:
        restored = KnnCosineScorer.from_state(dict(f))
    # The restored scorer uses the default chunk size: other chunk shapes may round differently in the last
    # float32 bits on some CPUs, so compare with a float32 tolerance, not exactly.
    np.testing.assert_allclose(restored.score(queries), small.score(queries), rtol=1e-5, atol=1e-7)
    restored.chunk_size = small.chunk_size  # same computation: then the scores must be identical
    np.testing.assert_array_equal(restored.score(queries), small.score(queries))
    assert restored.k == 3 and restored.combine == "normalized"


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        KnnCosineScorer().fit(_at(0.0), ["unknown"])
    with pytest.raises(ValueError):
        KnnCosineScorer(combine="mean")
    with pytest.raises(RuntimeError):
        KnnCosineScorer().score(_at(0.0))
