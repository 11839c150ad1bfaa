"""The ensemble detector: members put on one scale by their out-of-fold scores, combined, end to end,
checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from asd.cache.shard import Shard
from asd.models.base import FitConfig
from asd.models.checkpoint import load_detector, save_detector
from asd.models.ensemble import EnsembleDetector, EnsembleDetectorConfig, out_of_fold_scale
from conftest import prepared_synthetic_machine


def test_members_are_put_on_one_scale_by_their_out_of_fold_scores() -> None:
    ensemble = EnsembleDetector(EnsembleDetectorConfig(members=("gmm", "ae")))
    ensemble.scales_ = [out_of_fold_scale(np.array([1.0, 3.0, 5.0])), out_of_fold_scale(np.array([10.0, 30.0]))]
    assert ensemble.scales_[0] == pytest.approx((3.0, 2.0))
    assert out_of_fold_scale(np.array([np.inf, 2.0])) == (0.0, 1.0)  # one finite score: left as it is
    np.testing.assert_allclose(ensemble._combine([np.array([5.0, 1.0]), np.array([20.0 + 14.142135623730951, 20.0])]),
                               [1.0, -0.5])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="members"):
        EnsembleDetectorConfig(members=("gmm", "nope"))
    with pytest.raises(ValueError, match="members"):
        EnsembleDetectorConfig(members=("ensemble",))
    with pytest.raises(ValueError, match="members"):
        EnsembleDetectorConfig(members=("gmm", "auto"))
    with pytest.raises(ValueError, match="later_members_min_clips"):
        EnsembleDetectorConfig(later_members_min_clips=-1)
    assert EnsembleDetectorConfig(members=("gmm", "embed"), later_members_min_clips=500).members_for(499) == ("gmm",)
    assert EnsembleDetectorConfig(members=("gmm", "embed"), later_members_min_clips=500).members_for(500) == \
        ("gmm", "embed")
    with pytest.raises(ValueError, match="combine"):
        EnsembleDetectorConfig(combine="median")


@pytest.fixture(scope="module")
def valve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_synthetic_machine(tmp_path_factory, "valve", scale=0.1, anomaly_strength=4.0)


def test_ensemble_end_to_end_beats_chance_and_round_trips(valve: Path, tmp_path: Path) -> None:
    shard = Shard(valve / "train.h5")
    normal = shard.clips[shard.clips["label"] != "anomaly"]
    train = FitConfig(epochs=2, seed=0, device="cpu")
    detector = EnsembleDetector(EnsembleDetectorConfig(members=("gmm", "ae"))).fit(
        shard, normal.index.to_numpy(), train, log=lambda line: None)
    # The ensemble's out-of-fold scores are its members' out-of-fold scores standardised and averaged.
    members = [(m.decision_scores_["score"].to_numpy() - mean) / sd
               for m, (mean, sd) in zip(detector.members_, detector.scales_, strict=True)]
    np.testing.assert_allclose(detector.decision_scores_["score"].to_numpy(), np.mean(members, axis=0))
    assert [np.mean(z) for z in members] == pytest.approx([0.0, 0.0], abs=1e-9)

    test = Shard(valve / "test.h5")
    scores = detector.score_clips(test, device="cpu")
    labels = (test.clips.loc[scores.index, "label"] == "anomaly").to_numpy()
    assert roc_auc_score(labels, scores.to_numpy()) > 0.7
    save_detector(detector, tmp_path / "model.pt")
    restored = load_detector(tmp_path / "model.pt")
    assert [m.name for m in restored.members_] == ["gmm", "ae"]
    np.testing.assert_allclose(restored.score_clips(test, device="cpu").to_numpy(), scores.to_numpy(), rtol=1e-5)
