"""The contract every registered model keeps, checked the same way for each (as scikit-learn's estimator
checks do): unfitted it refuses to score; fitted on a machine type's normal clips it gives one finite score
per test clip, the same scores again for the same seed, and after a save and load; it leaves a finite
out-of-fold score for every training clip (`decision_scores_`, what the thresholds are fitted on); it
refuses a shard prepared with other features; and its decisions follow the DCASE rule with the
section x domain -> section -> pooled fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.cache.store import MachineData, discover
from asd.engine.config import RunConfig
from asd.engine.train import fit_machine
from asd.models.base import ALL_SECTIONS, FingerprintMismatch, FitConfig, threshold_key
from asd.models.checkpoint import load_detector, read_checkpoint, save_detector
from asd.models.registry import MODELS

# Each model at its smallest sensible size: the contract does not depend on how well it learns.
SMALL = {"embed": {"crop_frames": 32, "crops_per_clip": 1, "n_source_centroids": 4, "embedding_dim": 32},
         "twobranch": {"branch_dim": 16, "n_subclusters": 2, "stft_crop_frames": 16, "n_source_centroids": 4},
         "ensemble": {"members": ("gmm", "ae")}}
FIT = FitConfig(epochs=1, seed=0, device="cpu")


@pytest.fixture(scope="module")
def valve(synth_set) -> MachineData:
    return discover(synth_set["processed"], ["valve"])[0]


@pytest.fixture(scope="module")
def other_features(synth_set, tmp_path_factory) -> Path:
    """valve's test clips prepared with 64 mel bands: another feature fingerprint."""
    out = tmp_path_factory.mktemp("mel64")
    run_prep(PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(out), jobs=1, machines=("valve",),
                        features=FeatureConfig(n_mels=64)), show_progress=False)
    return out / "synth" / "valve" / "test.h5"


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_keeps_the_detector_contract(model: str, valve: MachineData, other_features: Path,
                                                 tmp_path: Path) -> None:
    config = RunConfig(model=model, model_options=SMALL.get(model, {}), fit=FIT)
    test = Shard(valve.tests[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        config.make_detector().score_clips(test, device="cpu")

    detector, rows = fit_machine(valve, config, log=lambda line: None)
    scores = detector.score_clips(test, device="cpu")
    assert list(scores.index) == list(test.clips.index) and np.isfinite(scores.to_numpy()).all()
    assert scores.nunique() > 1 and detector.reducer == FIT.aggregate
    keys = [threshold_key(r["section"], r["domain"]) for r in rows]
    assert keys[:3] == [ALL_SECTIONS, "00", "00/source"] and set(keys) <= {"*", "00", "00/source", "00/target"}
    train = Shard(valve.train)
    oof = detector.decision_scores_
    assert len(oof) == int((train.clips["label"] != "anomaly").sum()) and np.isfinite(oof["score"]).all()
    assert list(oof.columns) == ["file_name", "section", "domain", "score"]

    again, _ = fit_machine(valve, config, log=lambda line: None)
    np.testing.assert_array_equal(again.score_clips(test, device="cpu").to_numpy(), scores.to_numpy())

    path = save_detector(detector, tmp_path / "model.pt", config.to_dict())
    loaded = load_detector(path)
    assert type(loaded) is type(detector) and loaded.config == detector.config
    assert loaded.thresholds_ == detector.thresholds_ and loaded.fit_config_ == FIT
    assert read_checkpoint(path)["run_config"] == config.to_dict()
    np.testing.assert_array_equal(loaded.score_clips(test, device="cpu").to_numpy(), scores.to_numpy())
    assert loaded.decision_scores_.equals(detector.decision_scores_)

    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        loaded.score_clips(Shard(other_features), device="cpu")

    # the decision: strictly above the section's threshold; a section never trained uses the pooled one
    own, pooled = detector.thresholds_["00"]["value"], detector.thresholds_[ALL_SECTIONS]["value"]
    thresholds, decisions = loaded.decisions(np.array([own, np.nextafter(own, np.inf), pooled,
                                                       np.nextafter(pooled, np.inf)]),
                                             np.array(["00", "00", "07", "07"]))
    assert thresholds.tolist() == [own, own, pooled, pooled] and decisions.tolist() == [0, 1, 0, 1]
    # with the domain from the file name: the section x domain threshold (a fallback copy where few clips)
    source = detector.thresholds_["00/source"]["value"]
    assert loaded.decisions(np.array([source]), np.array(["00"]), np.array(["source"]))[0].tolist() == [source]
