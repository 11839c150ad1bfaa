"""Discriminative embeddings + domain-aware nearest neighbours: the recipe of the best from-scratch DCASE
systems (SPEC §6).

Training (:mod:`asd.models.embedding_train`): a compact CNN learns to tell apart the free auxiliary
classes of the normal clips (machine type x section x attribute x domain) from random crops of whole-clip
log-mels, with a sub-cluster AdaCos head, a spectral-shift self-supervised task and mixup. With
``scope="dataset"`` (the default) the networks learn from every machine type of a dataset trained
together; the train stage calls ``fit_shared`` once and hands them to each machine type's detector.

Folds, references and calibration are shared with every learned detector
(:class:`~asd.models.embedding_knn.EmbeddingKnnDetector`): ``n_networks`` networks on complementary folds,
k-means source centroids and every target clip as references, out-of-fold distances for the calibration.
Each clip is embedded whole (or as the mean of ``score_frames`` windows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asd.cache.shard import Shard
from asd.models.clip_crops import load_clip_frames, windows
from asd.models.embedding_knn import EmbeddingKnnDetector
from asd.models.embedding_net import EmbeddingNet
from asd.models.embedding_train import LabelledClips, build_network, train_network

HEADS = ("subcluster_adacos", "adacos", "arcface")
SCOPES = ("dataset", "machine")
# Frames per forward pass when scoring: 13 whole 10 s clips, ~0.25 GB of activations (52 clips took ~0.6 GB).
SCORE_BATCH_FRAMES = 4096


@dataclass(frozen=True)
class EmbeddingDetectorConfig:
    """Settings of :class:`EmbeddingDetector` (defaults sized for a 2-core CPU)."""

    head: str = "subcluster_adacos"  # one of HEADS
    n_subclusters: int = 16  # sub-cluster AdaCos only
    arcface_scale: float = 30.0
    arcface_margin: float = 0.5
    embedding_dim: int = 128
    # Self-supervised task: mel-bin shifts whose identity the network must also predict; (0,) turns it off.
    aux_shifts: tuple[int, ...] = (0, 6, -6)
    mixup_alpha: float = 1.0  # Beta(alpha, alpha) mixing weights; 0 disables mixup
    balance_power: float = 0.5  # class loss weights (mean count / count) ** power
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    crop_frames: int = 128  # training input: random crops of this many frames (~4 s; 32 = one segment)
    crops_per_clip: int = 3  # crops drawn from every clip per epoch
    score_frames: int = 0  # scoring input: 0 = the whole clip; else mean embedding of windows this long
    time_pool: str = "mean"  # how the network pools time: "mean", "max" or "meanmax" (asd.models.embedding_net)
    input_norm: bool = True  # the network removes each input's overall level first
    n_source_centroids: int = 16  # k-means centroids that stand for a section's source clips
    # The sparse target bank (asd.models.knn_domain; measured by bench/bench_knn_variants.py): synthetic
    # entries per target clip on segments between target clips, and distances divided by each entry's
    # local scale.
    target_mixup: int = 0
    density_scaling: bool = False
    # Networks on complementary folds (asd.models.fold_networks): network k never learns fold k, which it
    # scores for the calibration; the test score is the mean over the networks (a seed ensemble too).
    n_networks: int = 2
    # A domain with fewer out-of-fold distances (the ten DCASE target clips) borrows its section's largest
    # spread, relative to its own mean distance: distances to ten target clips are 3-5 times smaller than
    # those to the source centroids and spread about as much in proportion. The source spread as it is
    # never flagged a target clip; the ten clips' own spread flagged 28-44 % of fan's (bench_knn_variants).
    min_clips_for_sd: int = 20
    relative_spread: bool = True
    scope: str = "dataset"  # "dataset": one network for all machine types trained together; "machine"

    def __post_init__(self) -> None:
        # Checkpoints and JSON configs give lists back; keep the dataclass hashable.
        object.__setattr__(self, "aux_shifts", tuple(int(s) for s in self.aux_shifts))
        for field_name, value, allowed in (("head", self.head, HEADS), ("scope", self.scope, SCOPES)):
            if value not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, not {value!r}")
        if not self.aux_shifts:
            raise ValueError("aux_shifts needs at least one entry; (0,) disables the auxiliary task")
        for name in ("epochs", "batch_size", "crops_per_clip", "n_source_centroids"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_networks < 2:
            raise ValueError(f"n_networks must be >= 2 (each clip needs a network that never saw it), "
                             f"got {self.n_networks}")
        if self.crop_frames < 8 or (self.score_frames and self.score_frames < 8):
            raise ValueError("crop_frames (and score_frames unless 0) must be at least 8 frames")


class EmbeddingDetector(EmbeddingKnnDetector):
    """Angular-margin embeddings of whole-clip log-mels + domain-aware k-NN, calibrated out of fold."""

    name = "embed"
    config_class = EmbeddingDetectorConfig

    def __init__(self, config: EmbeddingDetectorConfig = EmbeddingDetectorConfig()) -> None:
        super().__init__(config)

    def _train_fold(self, clips: list[tuple[Shard, np.ndarray]], labels: np.ndarray, n_classes: int,
                    fit_config, seed: int, device: torch.device, log, desc: str
                    ) -> tuple[EmbeddingNet, list[dict]]:
        frames = [f for shard, indices in clips for f in load_clip_frames(shard, indices)]
        if n_classes * len(self.config.aux_shifts) == 1:
            log("warning: one class and no shift task: nothing to learn, the k-NN uses untrained embeddings")
        no_validation = LabelledClips([], np.zeros(0, dtype=np.int64))  # the held-out fold calibrates instead
        return train_network(LabelledClips(frames, np.asarray(labels, dtype=np.int64)), no_validation, n_classes,
                             self.config, fit_config.epochs or self.config.epochs, seed, device, log, desc=desc)

    @torch.no_grad()
    def _embed(self, network: EmbeddingNet, shard: Shard, clip_indices: np.ndarray,
               device: torch.device) -> np.ndarray:
        """Unit-length embedding of each whole clip ``[n, D]``: the mean of its windows' embeddings.
        Windows of the same shape from consecutive clips share a forward pass."""
        clips = load_clip_frames(shard, clip_indices)
        network = network.to(device).eval()
        sums = np.zeros((len(clips), self.config.embedding_dim), dtype=np.float64)
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            batch = torch.from_numpy(np.concatenate([w for _, w in pending])).to(device)
            out, first = network(batch, normalize=True).cpu().numpy(), 0
            for clip, w in pending:
                sums[clip] = out[first:first + len(w)].mean(axis=0)
                first += len(w)
            pending.clear()

        for i, frames in enumerate(clips):
            cut = windows(frames, self.config.score_frames)
            if pending and (pending[0][1].shape[1:] != cut.shape[1:]
                            or sum(len(w) for _, w in pending) * cut.shape[2] >= SCORE_BATCH_FRAMES):
                flush()
            pending.append((i, cut))
        if pending:
            flush()
        network.cpu()
        return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _network_state(self, network: EmbeddingNet) -> dict[str, Any]:
        return network.state_dict()

    def _load_network(self, state: dict[str, Any]) -> EmbeddingNet:
        network = build_network(self.config, int(self.feature_config_["n_mels"]))
        network.load_state_dict(state)
        return network
