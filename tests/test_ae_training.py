"""The autoencoder's training loop and scoring rules: early stopping on the held-out fold, in-memory vs
streamed training data, the official selective-Mahalanobis order (mean per domain over the clip, then the
smallest standardised one) and the fold networks' calibration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from asd.cache.build import PrepConfig, run_prep
from asd.cache.reading import segment_rows_of
from asd.cache.shard import Shard
from asd.models.autoencoder import AutoencoderDetector, AutoencoderDetectorConfig
from asd.models.autoencoder_net import frames_to_vectors, strided_vectors
from asd.models.base import FitConfig
from asd.models.checkpoint import load_detector, save_detector
from asd.models.fold_networks import assign_folds
from asd.models.training import EarlyStopping
from conftest import build_dataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """One machine type: 8 training clips (the last one target) and 8 test clips of 2 s."""
    base = tmp_path_factory.mktemp("ae-training")
    build_dataset(base / "raw" / "toy", {"fan": (8, 8)}, seconds=2.0)
    run_prep(PrepConfig(raw_dir=str(base / "raw"), out_dir=str(base / "processed"), jobs=1), show_progress=False)
    folder = base / "processed" / "toy" / "fan"
    return {"train": folder / "train.h5", "test": folder / "test.h5", "base": base}


def _fit(shard_path: Path, train: FitConfig, **config) -> AutoencoderDetector:
    shard = Shard(shard_path)
    detector = AutoencoderDetector(AutoencoderDetectorConfig(**config))
    return detector.fit(shard, shard.clips.index.to_numpy(), train, log=lambda line: None)


def _folds(shard: Shard, seed: int) -> np.ndarray:
    """The folds the detector deals the training clips into (section/domain strata)."""
    names = (shard.clips["section"].astype(str) + "/" + shard.clips["domain"].astype(str)).to_numpy()
    return assign_folds(names, 2, seed)


def test_clip_rule_equals_direct_numpy_computation(shards) -> None:
    """The raw scores of a fold network == per clip: mean Mahalanobis distance of all its vectors under each
    domain (float64 numpy from the stored statistics), one column per domain; the test score is the mean
    over the networks of the smallest standardised column. The vector rule (minimum per vector first)
    differs."""
    detector = _fit(shards["train"], FitConfig(epochs=2, device="cpu"), score="mahalanobis")
    k = next(i for i, m in enumerate(detector.mahalanobis_) if m.domains_.tolist() == ["source", "target"])
    network, maha = detector.networks_[k], detector.mahalanobis_[k]
    test = Shard(shards["test"])
    clips = test.clips.index.to_numpy()
    raw = detector._raw_scores(network, maha, test, clips, torch.device("cpu"))
    expected, per_vector_min = [], []
    for clip in clips:
        mels = test.logmel(segment_rows_of(test, np.array([clip])))
        with torch.no_grad():
            vectors = frames_to_vectors(torch.from_numpy(mels))
            errors = (vectors - network(vectors)).double().numpy()
        distances = np.stack([np.sqrt(np.einsum("nd,de,ne->n", errors - maha.means_[i], maha.precisions_[i],
                                                errors - maha.means_[i])) for i in range(2)], axis=1)
        expected.append(distances.mean(axis=0))
        per_vector_min.append(distances.min(axis=1).mean())
    np.testing.assert_allclose(raw, np.array(expected), rtol=1e-4)
    every_raw = [detector._raw_scores(n, m, test, clips, torch.device("cpu"))
                 for n, m in zip(detector.networks_, detector.mahalanobis_, strict=True)]
    calibration = detector.calibration_
    z = [np.min([(r[:, j] - calibration.calibration.stats_[("00", d)][0]) / calibration.calibration.stats_[("00", d)][1]
                 for j, d in enumerate(("source", "target")) if ("00", d) in calibration.calibration.stats_], axis=0)
         for r in every_raw]
    np.testing.assert_allclose(detector.score_clips(test, device="cpu").to_numpy(),
                               np.mean(z, axis=0) / calibration.spread, rtol=1e-6)
    vector_rule = AutoencoderDetector(replace(detector.config, selective="vector"))
    vector_raw = vector_rule._raw_scores(network, maha, test, clips, torch.device("cpu"))
    np.testing.assert_allclose(vector_raw, np.repeat(np.array(per_vector_min)[:, None], 2, axis=1), rtol=1e-4)
    assert not np.allclose(np.min(expected, axis=1), per_vector_min, rtol=1e-3)


def test_every_training_clip_is_scored_by_the_network_that_never_saw_it(shards) -> None:
    """decision_scores_ are out of fold: clip i of fold k scored by network k (which did not learn it),
    standardised by the calibration; re-scoring with the other network gives other values."""
    train = FitConfig(epochs=2, device="cpu", seed=3)
    detector = _fit(shards["train"], train)
    shard = Shard(shards["train"])
    folds = _folds(shard, train.seed)
    assert set(folds.tolist()) == {0, 1}
    clips = shard.clips.index.to_numpy()
    sections = shard.clips["section"].to_numpy().astype(str)
    by_network = [detector.calibration_.calibration.transform(
        detector._raw_scores(n, m, shard, clips, torch.device("cpu")), sections)
        for n, m in zip(detector.networks_, detector.mahalanobis_, strict=True)]
    own = np.array([by_network[f][i] for i, f in enumerate(folds)])
    np.testing.assert_allclose(detector.decision_scores_["score"].to_numpy(), own, rtol=1e-6)
    other = np.array([by_network[1 - f][i] for i, f in enumerate(folds)])
    assert not np.allclose(own, other)


def test_early_stopping_rule() -> None:
    model = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    values = [10.0, 9.0, 8.99, 8.98, 8.97, 5.0]
    stopped_at = next(epoch for epoch, value in enumerate(values, start=1) if stopper.step(epoch, value, model))
    # 8.99 / 8.98 / 8.97 are each less than 1% below 9: three epochs without improvement
    assert stopped_at == 5
    assert stopper.chosen_epoch == 5 and stopper.best_value == 8.97  # 5.0 came after the stop
    fixed = EarlyStopping(patience=1, min_delta=0.5, fixed=True)
    assert not any(fixed.step(epoch, 1.0, model) for epoch in range(1, 6))
    assert fixed.chosen_epoch == 5


def test_training_stops_early_keeps_best_and_records_it(shards, tmp_path) -> None:
    train = FitConfig(device="cpu", max_epochs=40, patience=2, min_delta=0.5)  # 50%: stops soon
    detector = _fit(shards["train"], train)
    stopping = detector.stopping_[0]  # the first network's (its curves are history_)
    assert stopping["stopped_early"] and stopping["epochs_run"] == len(detector.history_) < 40
    losses = [record["val_loss"] for record in detector.history_]
    assert stopping["chosen_epoch"] == int(np.argmin(losses)) + 1
    # the kept weights are the best epoch's: recomputing the held-out fold's loss gives the best value
    shard = Shard(shards["train"])
    held = shard.clips.index.to_numpy()[_folds(shard, train.seed) == 0]
    val_loss = float(np.mean(detector._segment_errors(detector.networks_[0], shard, segment_rows_of(shard, held),
                                                      torch.device("cpu"))))
    assert val_loss == pytest.approx(min(losses), rel=1e-4)
    restored = load_detector(save_detector(detector, tmp_path / "model.pt"))
    assert restored.stopping_ == detector.stopping_


def test_explicit_epochs_run_exactly(shards) -> None:
    detector = _fit(shards["train"], FitConfig(device="cpu", epochs=3, patience=1, min_delta=0.9))
    assert len(detector.history_) == 3 and [s["chosen_epoch"] for s in detector.stopping_] == [3, 3]
    assert not any(s["stopped_early"] for s in detector.stopping_)


def test_in_memory_and_streamed_training_both_learn(shards) -> None:
    losses = {}
    for budget, dtype in ((512.0, "float32"), (512.0, "float16"), (0.0, "float32")):  # 0 MiB: streamed
        train = FitConfig(device="cpu", epochs=5, memory_budget_mib=budget, cache_dtype=dtype)
        losses[budget, dtype] = [record["train_loss"] for record in _fit(shards["train"], train).history_]
        assert losses[budget, dtype][-1] < 0.97 * losses[budget, dtype][0], (budget, dtype)
    # same seed, same batch order: float16 storage changes the losses only in the rounding of the input
    np.testing.assert_allclose(losses[512.0, "float16"], losses[512.0, "float32"], rtol=1e-2)


def test_strided_vectors_equal_copied_vectors() -> None:
    logmel = torch.randn(3, 7, 9)  # [B, n_mels, T]
    frames = logmel.transpose(1, 2).contiguous()  # [B, T, n_mels]
    view = strided_vectors(frames, context=4)
    assert view.shape == (3, 6, 28) and view.data_ptr() == frames.data_ptr()  # a view, no copy
    torch.testing.assert_close(view.reshape(-1, 28), frames_to_vectors(logmel, context=4))


def test_fit_config_refuses_bad_values() -> None:
    for bad in ({"patience": 0}, {"min_delta": 1.5}, {"max_epochs": 0}, {"cache_dtype": "int8"},
                {"epochs": 0}, {"threads": -1}):
        with pytest.raises(ValueError):
            FitConfig(**bad)
    assert FitConfig(epochs=7).epoch_plan(100) == (7, True)
    assert FitConfig(max_epochs=30).epoch_plan(100) == (30, False)
    assert FitConfig().epoch_plan(100) == (100, False)


@pytest.mark.parametrize(("weight_decay", "reference"), [(0.0, "Adam"), (0.1, "AdamW")])
def test_adam_matches_torch(weight_decay: float, reference: str) -> None:
    # Without weight decay our Adam is torch's Adam; with it, the decoupled decay of torch's AdamW.
    from asd.models.training import Adam

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = Adam(ours.parameters(), lr=1e-2, weight_decay=weight_decay)
    opt_theirs = getattr(torch.optim, reference)(theirs.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(20):
        x = torch.randn(8, 5)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
