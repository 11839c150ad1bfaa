"""The embedding detector (angular-margin classifier + cosine k-NN) on a tiny synthetic dataset: it
learns, it is reproducible, its checkpoint round-trips, it refuses foreign caches, and it trains on
machine types with hidden attributes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.dataset.synth import generate_dataset
from asd.models.base import FingerprintMismatch, FitConfig
from asd.models.checkpoint import load_detector, save_detector
from asd.models.embedding import EmbeddingDetector, EmbeddingDetectorConfig
from asd.models.embedding_data import augmented_labels, class_weights, clip_class_names, mel_shift
from asd.models.registry import make_detector

# Small but complete: the shift task and mixup stay on, the network is the default one.
FAST = EmbeddingDetectorConfig(epochs=2, batch_size=32, crop_frames=32, crops_per_clip=2)  # seconds, and it learns
TRAIN = FitConfig(epochs=None, seed=3, device="cpu")


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fan (attributes in the names) and valve (hidden attributes), 2 s clips, clear anomalies; prepared
    with the default features, and fan once more with 64 mel bins (another fingerprint)."""
    raw = tmp_path_factory.mktemp("raw") / "synth"
    generate_dataset(raw, seed=0, scale=0.03, machines=["fan", "valve"], hidden_attributes=["valve"],
                     anomaly_strength=3.0, clip_seconds=2.0, n_jobs=1)
    out = tmp_path_factory.mktemp("processed")
    run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(out / "default"), jobs=1), show_progress=False)
    run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(out / "mel64"), jobs=1, machines=("fan",),
                        features=FeatureConfig(n_mels=64)), show_progress=False)
    return {"default": next((out / "default").rglob("fan")), "mel64": next((out / "mel64").rglob("fan")),
            "valve": next((out / "default").rglob("valve"))}


def fit(machine_dir: Path, config: EmbeddingDetectorConfig = FAST,
        train: FitConfig = TRAIN) -> EmbeddingDetector:
    shard = Shard(machine_dir / "train.h5")
    clips = shard.clips
    train_clips = clips.index[clips["label"] != "anomaly"].to_numpy()
    return EmbeddingDetector(config).fit(shard, train_clips, train, log=lambda line: None)


def scores_of(detector: EmbeddingDetector, machine_dir: Path) -> pd.Series:
    return detector.score_clips(Shard(machine_dir / "test.h5"), device="cpu")




@pytest.fixture(scope="module")
def fitted(processed: dict[str, Path]) -> EmbeddingDetector:
    return fit(processed["default"])


def test_learns_to_separate_anomalies(fitted: EmbeddingDetector, processed: dict[str, Path]) -> None:
    scores = scores_of(fitted, processed["default"])
    clips = Shard(processed["default"] / "test.h5").clips.loc[scores.index]
    assert np.isfinite(scores.to_numpy()).all()
    assert roc_auc_score(clips["label"] == "anomaly", scores) > 0.75
    assert len(fitted.history_) == 2 and "train_loss" in fitted.history_[0]
    assert len(fitted.networks_) == 2  # two networks on complementary folds
    assert any("spd" in name for name in fitted.class_names_)  # attribute classes, not just domains


def test_same_seed_same_scores(fitted: EmbeddingDetector, processed: dict[str, Path]) -> None:
    again = fit(processed["default"])
    np.testing.assert_array_equal(scores_of(again, processed["default"]),
                                  scores_of(fitted, processed["default"]))


def test_checkpoint_round_trip(fitted: EmbeddingDetector, processed: dict[str, Path], tmp_path: Path) -> None:
    path = save_detector(fitted, tmp_path / "model.pt")
    torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values only
    loaded = load_detector(path)
    assert isinstance(loaded, EmbeddingDetector)
    assert loaded.config == fitted.config and loaded.class_names_ == fitted.class_names_
    np.testing.assert_array_equal(scores_of(loaded, processed["default"]),
                                  scores_of(fitted, processed["default"]))


def test_refuses_a_cache_with_other_features(fitted: EmbeddingDetector, processed: dict[str, Path]) -> None:
    with pytest.raises(FingerprintMismatch):
        scores_of(fitted, processed["mel64"])


def test_hidden_attributes_still_train(processed: dict[str, Path]) -> None:
    # Also the other options: ArcFace, no shift task, no mixup, windowed scoring, machine scope, three
    # fold networks, and `train.epochs` overriding the config's epochs.
    config = replace(FAST, head="arcface", aux_shifts=(0,), mixup_alpha=0.0, score_frames=32, scope="machine",
                     n_networks=3)
    detector = fit(processed["valve"], config, replace(TRAIN, epochs=1))
    assert detector.class_names_ == ["section_00/source", "section_00/target"]
    assert len(detector.history_) == 1 and len(detector.networks_) == 3
    scores = scores_of(detector, processed["valve"])
    assert np.isfinite(scores.to_numpy()).all() and scores.nunique() > 1


def test_registered() -> None:
    detector = make_detector("embed")
    assert isinstance(detector, EmbeddingDetector) and detector.config == EmbeddingDetectorConfig()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="head"):
        EmbeddingDetectorConfig(head="softmax")
    with pytest.raises(ValueError, match="scope"):
        EmbeddingDetectorConfig(scope="world")
    with pytest.raises(ValueError, match="crop_frames"):
        EmbeddingDetectorConfig(crop_frames=4)
    with pytest.raises(ValueError, match="n_networks"):
        EmbeddingDetectorConfig(n_networks=1)
    assert EmbeddingDetectorConfig(aux_shifts=[0, 2]).aux_shifts == (0, 2)  # lists from checkpoints


def test_class_table_and_weights() -> None:
    clips = pd.DataFrame({"section": ["00", "00", "00", "01", "01"],
                          "attributes": ["spd_1", "spd_1", "noAttribute", "", "spd_2"],
                          "domain": ["source", "source", "target", "source", "target"]})
    assert clip_class_names(clips).tolist() == [
        "section_00/spd_1/source", "section_00/spd_1/source", "section_00/target", "section_01/source",
        "section_01/spd_2/target"]
    weights = class_weights(np.array([990, 10]), power=0.5)
    assert weights[1] / weights[0] == pytest.approx(np.sqrt(99))
    np.testing.assert_allclose(class_weights(np.array([5, 50]), power=0.0), [1.0, 1.0])


def test_mel_shift_and_labels() -> None:
    x = torch.arange(5.0).view(1, 5, 1).expand(3, 5, 2).contiguous()
    shifted = mel_shift(x, torch.tensor([0, 2, -1]))
    assert shifted[0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert shifted[1, :, 0].tolist() == [0, 0, 0, 1, 2]  # energy moves up, the lowest bin repeats
    assert shifted[2, :, 0].tolist() == [1, 2, 3, 4, 4]
    generator = torch.Generator().manual_seed(0)
    out, labels = augmented_labels(x, torch.tensor([0, 1, 1]), (0, 2, -1), generator)
    for row, label in zip(out, labels.tolist(), strict=True):
        assert label // 3 in (0, 1)
        torch.testing.assert_close(row, mel_shift(x[:1], torch.tensor([(0, 2, -1)[label % 3]]))[0])


def test_one_network_learns_every_machine_type_of_a_dataset(processed: dict[str, Path], tmp_path: Path) -> None:
    from asd.cache.store import discover
    from asd.engine.config import RunConfig
    from asd.engine.test import score_machine
    from asd.engine.train import fit_shared, shared_groups, train_machine
    from asd.evaluation.metrics import metrics_table
    from asd.run_folder import RunFolder

    machines = discover(processed["default"].parent)  # the dataset's folder: fan and valve
    assert [machine.machine for machine in machines] == ["fan", "valve"]
    dataset = machines[0].dataset
    options = {"epochs": 2, "batch_size": 32, "crop_frames": 32, "crops_per_clip": 2}
    config = RunConfig(model="embed", model_options=options, fit=TRAIN)
    assert shared_groups(machines, RunConfig(model="gmm", fit=TRAIN)) == {}
    assert shared_groups(machines, RunConfig(model="embed", model_options={**options, "scope": "machine"},
                                             fit=TRAIN)) == {}
    assert [m.machine for m in shared_groups(machines, config)[dataset]] == ["fan", "valve"]
    folder = RunFolder(tmp_path)
    networks = fit_shared(dataset, machines, config, folder)
    assert {name.split("/")[0] for name in networks.class_names} == {"fan", "valve"}
    assert "one network for fan, valve" in folder.shared_train_log(dataset).read_text()
    for machine in machines:
        train_machine(machine, config, folder, networks)
    fan = load_detector(folder.model_path(dataset, "fan"))
    assert fan.class_names_ == networks.class_names and len(fan.networks_) == 2
    for name, value in fan.networks_[1].state_dict().items():  # the shared weights, saved with each type
        torch.testing.assert_close(value, networks.networks[1].state_dict()[name])
    predictions, rules = score_machine(machines[0], config, folder)
    assert metrics_table(predictions, rules)["AUC (source)"].mean() > 0.7


def test_one_network_refuses_machine_types_with_different_features(processed: dict[str, Path]) -> None:
    from asd.errors import BadState

    parts = [(name, Shard(processed[key] / "train.h5"), np.array([0, 1, 2])) for name, key in
             (("fan", "default"), ("fan64", "mel64"))]
    with pytest.raises(BadState, match="different features"):
        EmbeddingDetector(FAST).fit_shared(parts, TRAIN, log=lambda line: None)


def test_an_ensemble_adds_embed_only_from_its_clip_count_and_learns_it_once(processed: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    """`auto`'s rule: below `later_members_min_clips` a machine type gets the first member alone, with that
    member's own scores; from it on, `embed` joins with networks learned once for the whole dataset."""
    from asd.cache.store import discover
    from asd.engine.config import RunConfig
    from asd.engine.train import fit_machine, fit_shared, shared_groups
    from asd.run_folder import RunFolder

    machines = discover(processed["default"].parent)
    dataset, fan = machines[0].dataset, machines[0]
    n_fan = int((Shard(fan.train).clips["label"] != "anomaly").sum())
    train = FitConfig(epochs=1, seed=3, device="cpu")

    def config(min_clips: int) -> RunConfig:
        return RunConfig(model="ensemble", fit=train, model_options={
            "members": ["gmm", "embed"], "later_members_min_clips": min_clips})

    small = config(n_fan + 1)
    assert shared_groups(machines, small) == {}  # no machine type has the clips: nothing learned per dataset
    alone, rows = fit_machine(fan, small, log=lambda line: None)
    gmm, gmm_rows = fit_machine(fan, RunConfig(model="gmm", fit=train), log=lambda line: None)
    assert [m.name for m in alone.members_] == ["gmm"]
    pd.testing.assert_frame_equal(alone.decision_scores_, gmm.decision_scores_)
    assert [{**row, "model": "gmm"} for row in rows] == gmm_rows  # the same thresholds
    test = Shard(fan.tests[0])
    pd.testing.assert_series_equal(alone.score_clips(test, device="cpu"), gmm.score_clips(test, device="cpu"))

    large = config(n_fan)
    assert [m.machine for m in shared_groups(machines, large)[dataset]] == ["fan", "valve"]
    shared = fit_shared(dataset, machines, large, RunFolder(tmp_path))
    assert list(shared) == ["embed"]
    lines: list[str] = []
    both, _ = fit_machine(fan, large, log=lines.append, shared=shared)
    assert [m.name for m in both.members_] == ["gmm", "embed"]
    assert both.members_[1].networks_ is shared["embed"].networks
    assert any("trained for the whole dataset" in line for line in lines)
    labels = (test.clips["label"] == "anomaly").to_numpy()
    assert roc_auc_score(labels, both.score_clips(test, device="cpu").reindex(test.clips.index)) > 0.7
