"""The autoencoder's training loop and scoring rules: early stopping, in-memory vs streamed training data,
and the official selective-Mahalanobis order (mean per domain over the clip, then the minimum)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from asd.cache.build import PrepConfig, run_prep
from asd.cache.reading import segment_rows_of, split_train_validation
from asd.cache.shard import Shard
from asd.models.autoencoder import AutoencoderDetector, AutoencoderDetectorConfig
from asd.models.autoencoder_net import frames_to_vectors, strided_vectors
from asd.models.base import FitConfig, reduce_selective
from asd.models.checkpoint import load_detector, save_detector
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
    train_clips, val_clips = split_train_validation(shard.clips, 0.1, train.seed)
    detector = AutoencoderDetector(AutoencoderDetectorConfig(**config))
    return detector.fit(shard, train_clips, val_clips, train, log=lambda line: None)


def test_reduce_selective_hand_built_case() -> None:
    # two clips: clip 7 has segments with (source, target) means (1, 9) and (3, 1): per-domain clip means
    # (2, 5) -> 2; clip 9 has (8, 2) and (6, 4) -> (7, 3) -> 3. The per-vector rule would give other values.
    columns = np.array([[1.0, 9.0], [3.0, 1.0], [8.0, 2.0], [6.0, 4.0]])
    clip = np.array([7, 7, 9, 9])
    scores = reduce_selective(columns, clip, "mean")
    assert scores.index.tolist() == [7, 9]
    np.testing.assert_allclose(scores.to_numpy(), [2.0, 3.0])
    np.testing.assert_allclose(reduce_selective(columns, clip, "max").to_numpy(), [3.0, 4.0])  # max(3,9)->min
    np.testing.assert_allclose(reduce_selective(columns[:, 0], clip, "mean").to_numpy(), [2.0, 7.0])


def test_clip_rule_equals_direct_numpy_computation(shards) -> None:
    """score_clips of ae-maha == per clip: mean Mahalanobis distance of all its vectors under each domain
    (float64 numpy from the stored statistics), then the minimum of the two; the vector rule differs."""
    detector = _fit(shards["train"], FitConfig(epochs=2, device="cpu"), score="mahalanobis")
    assert detector.mahalanobis_.domains_.tolist() == ["source", "target"]
    test = Shard(shards["test"])
    got = detector.score_clips(test, device="cpu")
    maha = detector.mahalanobis_
    expected, per_vector_min = [], []
    for clip in test.clips.index:
        mels = test.logmel(segment_rows_of(test, np.array([clip])))
        with torch.no_grad():
            vectors = frames_to_vectors(torch.from_numpy(mels))
            errors = (vectors - detector.network_(vectors)).double().numpy()
        distances = np.stack([np.sqrt(np.einsum("nd,de,ne->n", errors - maha.means_[i], maha.precisions_[i],
                                                errors - maha.means_[i])) for i in range(2)], axis=1)
        expected.append(distances.mean(axis=0).min())
        per_vector_min.append(distances.min(axis=1).mean())
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-4)
    vector_rule = AutoencoderDetector(replace(detector.config, selective="vector"))
    vector_rule.__dict__.update({k: v for k, v in detector.__dict__.items() if k != "config"})
    np.testing.assert_allclose(vector_rule.score_clips(test, device="cpu").to_numpy(), per_vector_min, rtol=1e-4)
    assert not np.allclose(expected, per_vector_min, rtol=1e-3)


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
    stopping = detector.stopping_
    assert stopping["stopped_early"] and stopping["epochs_run"] == len(detector.history_) < 40
    losses = [record["val_loss"] for record in detector.history_]
    assert stopping["chosen_epoch"] == int(np.argmin(losses)) + 1
    # the kept weights are the best epoch's: recomputing the held-out loss gives the best value
    shard = Shard(shards["train"])
    _, val_clips = split_train_validation(shard.clips, 0.1, train.seed)
    val_loss = float(np.mean(detector._segment_errors(detector.network_, shard, segment_rows_of(shard, val_clips),
                                                      torch.device("cpu"))))
    assert val_loss == pytest.approx(min(losses), rel=1e-4)
    restored = load_detector(save_detector(detector, tmp_path / "model.pt"))
    assert restored.stopping_ == stopping


def test_explicit_epochs_run_exactly(shards) -> None:
    detector = _fit(shards["train"], FitConfig(device="cpu", epochs=3, patience=1, min_delta=0.9))
    assert len(detector.history_) == 3 and detector.stopping_["chosen_epoch"] == 3
    assert not detector.stopping_["stopped_early"]


def test_in_memory_and_streamed_training_both_learn(shards) -> None:
    losses = {}
    for budget, dtype in ((512.0, "float32"), (512.0, "float16"), (0.0, "float32")):  # 0 MiB: streamed
        train = FitConfig(device="cpu", epochs=3, memory_budget_mib=budget, cache_dtype=dtype)
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
