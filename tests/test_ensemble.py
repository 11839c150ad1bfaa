"""The ensemble detector: standardisation on held-out normal clips, combination, end to end, checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from asd.cache.reading import split_train_validation
from asd.cache.shard import Shard
from asd.models.base import FitConfig
from asd.models.checkpoint import load_detector, save_detector
from asd.models.ensemble import EnsembleDetector, EnsembleDetectorConfig, standardisation_table, standardise
from conftest import prepared_synthetic_machine


def test_standardisation_per_section_with_fallbacks() -> None:
    scores = np.array([1.0, 3.0, 5.0, 10.0, 20.0, 30.0, 7.0])
    sections = np.array(["00", "00", "00", "01", "01", "01", "02"])
    domains = np.array(["source", "source", "target", "source", "source", "source", "source"])
    table = standardisation_table(scores, sections, domains, "section", min_clips=3)
    assert table["00"] == pytest.approx((3.0, 2.0))
    assert table["01"] == pytest.approx((20.0, 10.0))
    assert "02" not in table  # one clip: its section falls back to the pooled figures
    pooled_mean, pooled_sd = np.mean(scores), np.std(scores, ddof=1)
    z = standardise(np.array([5.0, 40.0, 7.0, 7.0]), np.array(["00", "01", "02", "99"]),
                    np.array(["target"] * 4), table)
    np.testing.assert_allclose(z, [1.0, 2.0, (7 - pooled_mean) / pooled_sd, (7 - pooled_mean) / pooled_sd])


def test_standardisation_by_section_and_domain_uses_the_domain_only_with_enough_clips() -> None:
    scores = np.array([1.0, 2.0, 3.0, 10.0, 12.0, 14.0, 100.0])
    sections = np.array(["00"] * 7)
    domains = np.array(["source"] * 3 + ["target"] * 3 + ["other"])
    table = standardisation_table(scores, sections, domains, "section-domain", min_clips=3)
    assert table["00/source"] == pytest.approx((2.0, 1.0))
    assert table["00/target"] == pytest.approx((12.0, 2.0))
    assert "00/other" not in table
    z = standardise(np.array([4.0, 16.0, 100.0]), sections[:3], np.array(["source", "target", "other"]), table)
    assert z[:2] == pytest.approx([2.0, 2.0])
    assert z[2] == pytest.approx((100 - scores.mean()) / scores.std(ddof=1))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="members"):
        EnsembleDetectorConfig(members=("gmm", "nope"))
    with pytest.raises(ValueError, match="members"):
        EnsembleDetectorConfig(members=("ensemble",))
    with pytest.raises(ValueError, match="combine"):
        EnsembleDetectorConfig(combine="median")


@pytest.fixture(scope="module")
def valve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_synthetic_machine(tmp_path_factory, "valve", scale=0.1, anomaly_strength=4.0)


def test_ensemble_end_to_end_beats_chance_and_round_trips(valve: Path, tmp_path: Path) -> None:
    shard = Shard(valve / "train.h5")
    normal = shard.clips[shard.clips["label"] != "anomaly"]
    train = FitConfig(epochs=2, seed=0, device="cpu")
    train_clips, val_clips = split_train_validation(normal, 0.2, train.seed)
    detector = EnsembleDetector(EnsembleDetectorConfig(members=("gmm", "ae"))).fit(
        shard, train_clips, val_clips, train, log=lambda line: None)
    # On the held-out normal clips each member was standardised on, its z-scores have mean 0 and sd 1.
    member_scores = detector.members_[0].score_clips(shard, val_clips, device="cpu").to_numpy()
    sections = shard.clips["section"].to_numpy()[val_clips]
    z = standardise(member_scores, sections, sections, detector.standardisation_[0])
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std(ddof=1) == pytest.approx(1.0)

    test = Shard(valve / "test.h5")
    scores = detector.score_clips(test, device="cpu")
    labels = (test.clips.loc[scores.index, "label"] == "anomaly").to_numpy()
    assert roc_auc_score(labels, scores.to_numpy()) > 0.7
    save_detector(detector, tmp_path / "model.pt")
    restored = load_detector(tmp_path / "model.pt")
    assert [m.name for m in restored.members_] == ["gmm", "ae"]
    np.testing.assert_allclose(restored.score_clips(test, device="cpu").to_numpy(), scores.to_numpy(), rtol=1e-5)
