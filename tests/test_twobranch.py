"""The two-branch detector: its waveform input rebuilt exactly from the cache, the spectrum branch's
full-resolution input, feature-exchange targets, fold hygiene of every learned detector, and a short
end-to-end run that beats chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from asd.cache.audio import read_clip
from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.models.base import FitConfig
from asd.models.clip_crops import load_clip_waveforms
from asd.models.embedding_knn import EmbeddingKnnDetector
from asd.models.twobranch import TwoBranchDetector, TwoBranchDetectorConfig
from asd.models.twobranch_net import TwoBranchNet, TwoBranchNetConfig
from asd.models.twobranch_train import exchanged_targets
from conftest import prepared_synthetic_machine, write_wav


def test_whole_clip_waveform_is_rebuilt_exactly_and_wrapped(tmp_path: Path) -> None:
    # 7.3 s: seven whole segments plus an end-aligned tail segment that overlaps the seventh.
    wavs = [tmp_path / "raw" / "fan" / "train" / f"section_00_source_train_normal_000{i}_a_1.wav" for i in (0, 1)]
    write_wav(wavs[0], seconds=7.3, seed=4)
    write_wav(wavs[1], seconds=2.0, seed=5)
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "out"), jobs=1), show_progress=False)
    shard = Shard(next((tmp_path / "out").rglob("train.h5")))
    expected = [read_clip(str(w), FeatureConfig()).samples for w in wavs]
    n = len(expected[0])
    waves = load_clip_waveforms(shard, np.array([1, 0]), n)  # any order
    assert waves.dtype == np.int16 and waves.shape == (2, n)
    np.testing.assert_array_equal(waves[1], expected[0])
    short = len(expected[1])
    np.testing.assert_array_equal(waves[0], np.take(expected[1], np.arange(n) % short))  # wrapped, no silence


def test_spectrum_branch_reads_the_whole_clip_at_full_fft_resolution() -> None:
    network = TwoBranchNet(TwoBranchNetConfig(clip_samples=32000, branch_dim=8)).eval()
    x = torch.randn(2, 32000)
    spectrum, stft = network(x)
    assert spectrum.shape == stft.shape == (2, 8)
    assert network.spectrum.convolutions[0].in_channels == 1
    assert network.log_stft(x).shape == (2, 513, (32000 - 1024) // 512 + 1)
    # a narrow tone change (1 Hz) moves the spectrum branch: 0.5 Hz bins resolve it
    t = torch.arange(32000) / 16000.0
    a, b = torch.sin(2 * np.pi * 1000.0 * t), torch.sin(2 * np.pi * 1001.0 * t)
    with torch.no_grad():
        bins = torch.fft.rfft(torch.stack([a, b]), dim=1).abs().argmax(dim=1)
    assert bins.tolist() == [2000, 2002]
    with pytest.raises(ValueError, match="samples"):
        TwoBranchNetConfig(clip_samples=8000)
    with pytest.raises(ValueError, match=r"\[B, 32000\]"):
        network(torch.randn(2, 16000))


def test_feature_exchange_targets() -> None:
    soft = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
    targets = exchanged_targets(soft, torch.tensor([1, 0]))
    assert targets.shape == (4, 6)
    torch.testing.assert_close(targets[:2, :3], soft)
    assert targets[:2, 3:].abs().sum() == 0 and targets[2:, :3].abs().sum() == 0
    torch.testing.assert_close(targets[2, 3:], torch.tensor([0.5, 0.3, 0.2]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))


class _RecordingDetector(EmbeddingKnnDetector):
    """A learned detector whose "network" is a fixed random projection of the pooled log-mel: it records
    which clips each fold network was trained on, so the fold rule can be checked."""

    name = "recording"

    class config_class:  # noqa: N801 - a stand-in config with the fields the base class reads
        n_networks, n_source_centroids, scope, epochs, min_clips_for_sd = 3, 2, "machine", 1, 5
        target_mixup, density_scaling, relative_spread = 2, True, True

    def __init__(self) -> None:
        super().__init__(self.config_class())
        self.trained_on: list[np.ndarray] = []
        self.trained_shards: list[list[tuple[str, int]]] = []

    def _train_fold(self, clips, labels, n_classes, fit_config, seed, device, log, desc):
        self.trained_on.append(np.concatenate([indices for _, indices in clips]))
        self.trained_shards.append([(str(shard.path), len(indices)) for shard, indices in clips])
        return torch.nn.Linear(128, 8, bias=False), []

    def _embed(self, network, shard, clip_indices, device):
        from asd.models.clip_crops import load_clip_frames

        pooled = np.stack([f.astype(np.float32).mean(axis=1) for f in load_clip_frames(shard, clip_indices)])
        with torch.no_grad():
            return torch.nn.functional.normalize(network(torch.from_numpy(pooled)), dim=1).numpy()

    def _network_state(self, network):
        return network.state_dict()

    def _load_network(self, state):
        network = torch.nn.Linear(128, 8, bias=False)
        network.load_state_dict(state)
        return network


@pytest.fixture(scope="module")
def fan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """201 training clips of 2 s: enough for a network to learn in a few epochs."""
    return prepared_synthetic_machine(tmp_path_factory, "fan", scale=0.2, anomaly_strength=4.0)


def test_each_network_never_sees_its_own_fold(fan: Path) -> None:
    shard = Shard(fan / "train.h5")
    normal = shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()
    detector = _RecordingDetector().fit(shard, normal, FitConfig(seed=0, device="cpu"), log=lambda line: None)
    assert len(detector.trained_on) == 3
    seen = np.zeros(len(normal), int)
    for trained in detector.trained_on:
        seen += np.isin(normal, trained)
        assert 0 < len(trained) < len(normal)
    assert (seen == 2).all()  # every clip trained two of the three networks: it was held out of exactly one
    assert np.isfinite(detector.decision_scores_["score"]).all()


def test_two_branch_detector_learns_to_separate_anomalies(fan: Path) -> None:
    shard = Shard(fan / "train.h5")
    normal = shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()
    config = TwoBranchDetectorConfig(epochs=3, branch_dim=32, n_subclusters=4, n_source_centroids=4,
                                     stft_crop_frames=32, scope="machine")
    detector = TwoBranchDetector(config).fit(shard, normal, FitConfig(seed=0, device="cpu"), log=lambda line: None)
    assert len(detector.networks_) == 2 and len(detector.history_) == 3
    test = Shard(fan / "test.h5")
    scores = detector.score_clips(test, device="cpu")
    labels = (test.clips.loc[scores.index, "label"] == "anomaly").to_numpy()
    assert np.isfinite(scores.to_numpy()).all()
    assert roc_auc_score(labels, scores.to_numpy()) > 0.7


def test_auxiliary_clips_add_classes_that_every_network_learns(fan: Path, tmp_path_factory) -> None:
    other = prepared_synthetic_machine(tmp_path_factory, "slider", scale=0.05, anomaly_strength=4.0)
    shard, aux = Shard(fan / "train.h5"), Shard(other / "train.h5")
    normal = shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()
    aux_clips = aux.clips.index[aux.clips["label"] != "anomaly"].to_numpy()
    detector = _RecordingDetector()
    networks = detector.fit_shared([("fan", shard, normal)], FitConfig(seed=0, device="cpu"), log=lambda line: None,
                                   aux_parts=[("aux:synth/slider", aux, aux_clips)])
    assert any(name.startswith("aux:synth/slider/") for name in networks.class_names)
    assert any(name.startswith("fan/") for name in networks.class_names)
    for trained in detector.trained_shards:  # every network: part of fan, all of the auxiliary clips
        assert trained[1] == (str(aux.path), len(aux_clips)) and 0 < trained[0][1] < len(normal)
    assert set(networks.folds) == {"fan"}  # folds (and scores) only for the machine types of the run


def test_an_auxiliary_folder_without_training_shards_is_refused_before_any_work(fan: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from asd.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(fan.parent), "--model", "twobranch",
                                       "--aux-processed-dir", str(tmp_path / "empty"),
                                       "--output-dir", str(tmp_path / "run")])
    assert result.exit_code != 0 and "--aux-processed-dir" in result.output and "no train.h5" in result.output
    assert not (tmp_path / "run" / "config.json").exists()
