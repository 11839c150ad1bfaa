"""Discriminative embeddings + domain-aware nearest neighbours: the recipe of the best from-scratch DCASE
systems (SPEC §6).

Training (:mod:`asd.models.embedding_train`): a compact CNN learns to tell apart the free auxiliary
classes of the normal clips (machine type x section x attribute x domain) from random crops of whole-clip
log-mels. With ``scope="dataset"`` (the default) one network is trained for all machine types of a
dataset that are trained together, so the embedding learns from every type's classes; the train stage
calls :meth:`EmbeddingDetector.fit_shared` once and hands the networks to each machine type's detector.
``n_networks > 1`` trains that many networks with different seeds (a seed ensemble).

Scoring: each clip is embedded whole (or as the mean of ``score_frames`` windows) and compared with its
section's normal clips by :class:`~asd.models.knn_domain.DomainKnn` (k-means source centroids, every
target clip, each domain standardised on its own held-out normal clips). An ensemble averages the
standardised scores of its networks. The score is per clip; every segment of a clip carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asd.cache.shard import Shard
from asd.errors import BadState
from asd.models.base import Detector, FitConfig
from asd.models.clip_crops import load_clip_frames, windows
from asd.models.device import resolve_device, set_threads
from asd.models.embedding_data import clip_class_names
from asd.models.embedding_net import EmbeddingNet
from asd.models.embedding_train import LabelledClips, build_network, train_network
from asd.models.knn_domain import DomainKnn

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
    n_networks: int = 1  # seed ensemble: networks trained with different seeds, scores averaged
    scope: str = "dataset"  # "dataset": one network for all machine types trained together; "machine"

    def __post_init__(self) -> None:
        # Checkpoints and JSON configs give lists back; keep the dataclass hashable.
        object.__setattr__(self, "aux_shifts", tuple(int(s) for s in self.aux_shifts))
        for field_name, value, allowed in (("head", self.head, HEADS), ("scope", self.scope, SCOPES)):
            if value not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, not {value!r}")
        if not self.aux_shifts:
            raise ValueError("aux_shifts needs at least one entry; (0,) disables the auxiliary task")
        for name in ("epochs", "batch_size", "crops_per_clip", "n_source_centroids", "n_networks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_frames < 8 or (self.score_frames and self.score_frames < 8):
            raise ValueError("crop_frames (and score_frames unless 0) must be at least 8 frames")


@dataclass
class SharedNetworks:
    """Networks trained once for several machine types (``scope="dataset"``), with their class table."""

    networks: list[EmbeddingNet]
    class_names: list[str]
    history: list[dict] = field(default_factory=list)


def _labelled(frames: list[np.ndarray], names: np.ndarray, table: list[str]) -> LabelledClips:
    """The clips whose class is in `table`, labelled by their index there."""
    lookup = {name: i for i, name in enumerate(table)}
    keep = [i for i, name in enumerate(names) if name in lookup]
    return LabelledClips([frames[i] for i in keep], np.asarray([lookup[names[i]] for i in keep], dtype=np.int64))


def _train_networks(parts: list[tuple[str, Shard, np.ndarray, np.ndarray]], cfg: EmbeddingDetectorConfig,
                    fit_config: FitConfig, device: torch.device, log: Callable[[str], None]) -> SharedNetworks:
    """Train ``cfg.n_networks`` networks on the normal clips of one or more (prefix, shard, train clips,
    held-out clips); class names are prefixed so that machine types never share a class."""
    if len({shard.fingerprint for _, shard, _, _ in parts}) > 1:
        raise BadState("one network cannot learn machine types prepared with different features ("
                       + ", ".join(f"{shard.path}: {shard.fingerprint}" for _, shard, _, _ in parts)
                       + "); prepare them with the same data_prep settings, or train with "
                       "--model-option scope=machine")
    train_frames, train_names, val_frames, val_names = [], [], [], []
    for prefix, shard, train_clips, val_clips in parts:
        names = np.char.add(prefix, clip_class_names(shard.clips))
        train_frames += load_clip_frames(shard, train_clips)
        train_names += names[train_clips].tolist()
        val_frames += load_clip_frames(shard, val_clips)
        val_names += names[val_clips].tolist()
    table = sorted(set(train_names))
    train_set = _labelled(train_frames, np.asarray(train_names), table)
    val_set = _labelled(val_frames, np.asarray(val_names), table)  # classes never trained: no val loss
    counts = np.bincount(train_set.labels, minlength=len(table))
    log(f"{len(table)} classes x {len(cfg.aux_shifts)} shifts, {len(train_set)} training clips; clips per "
        "class: " + ", ".join(f"{name}={n}" for name, n in zip(table, counts, strict=True)))
    if len(table) * len(cfg.aux_shifts) == 1:
        log("warning: one class and no shift task: nothing to learn, the k-NN uses untrained embeddings")
    epochs = fit_config.epochs or cfg.epochs
    networks, history = [], []
    for i in range(cfg.n_networks):
        seed = fit_config.seed + 1000 * i
        network, losses = train_network(train_set, val_set, len(table), cfg, epochs, seed, device, log,
                                        desc=f"embed network {i + 1}/{cfg.n_networks}")
        networks.append(network)
        history = history or losses  # the first network's curves stand for the ensemble in loss.png
    return SharedNetworks(networks, table, history)


class EmbeddingDetector(Detector):
    """Angular-margin embeddings + domain-aware k-NN. Fitted state: `networks_`, `knns_`, `class_names_`;
    `shared_` holds networks trained for several machine types before `fit` (see `fit_shared`)."""

    name = "embed"
    config_class = EmbeddingDetectorConfig

    def __init__(self, config: EmbeddingDetectorConfig = EmbeddingDetectorConfig()) -> None:
        super().__init__(config)
        self.networks_: list[EmbeddingNet] = []
        self.knns_: list[DomainKnn] = []
        self.class_names_: list[str] = []
        self.shared_: SharedNetworks | None = None

    def fit_shared(self, parts: list[tuple[str, Shard, np.ndarray, np.ndarray]], fit_config: FitConfig,
                   log: Callable[[str], None] = print) -> SharedNetworks:
        """Train the networks once on several machine types: ``parts`` are (name, training shard, training
        clips, held-out clips). Give the result to each machine type's detector as ``shared_``."""
        set_threads(fit_config.threads)
        parts = [(f"{name}/", shard, train_clips, val_clips) for name, shard, train_clips, val_clips in parts]
        return _train_networks(parts, self.config, fit_config, resolve_device(fit_config.device), log)

    # --- embedding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _embed(self, network: EmbeddingNet, clips: list[np.ndarray], device: torch.device) -> np.ndarray:
        """Unit-length embedding of each whole clip ``[len(clips), D]``: the mean of its windows' embeddings.
        Windows of the same shape from consecutive clips share a forward pass."""
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

    # --- training ----------------------------------------------------------------------------------
    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, fit_config: FitConfig,
             device: torch.device, log) -> None:
        set_threads(fit_config.threads)
        if self.shared_ is None:
            if self.config.scope == "dataset":
                log("scope dataset: no networks were trained for the whole dataset (a single machine type, "
                    "or a scheduler that trains machine types apart); training on this machine type alone")
            shared = _train_networks([("", shard, train_clips, val_clips)], self.config, fit_config, device, log)
        else:
            shared = self.shared_
            log(f"using {len(shared.networks)} network(s) trained for the whole dataset "
                f"({len(shared.class_names)} classes)")
        self.networks_, self.class_names_, self.history_ = shared.networks, shared.class_names, shared.history
        frames = load_clip_frames(shard, train_clips)
        table = shard.clips.loc[train_clips]
        self.knns_ = [DomainKnn(self.config.n_source_centroids, seed=fit_config.seed).fit(
            self._embed(network, frames, device), table["section"].to_numpy(), table["domain"].to_numpy())
            for network in self.networks_]

    # --- scoring -----------------------------------------------------------------------------------
    def score_clip_frames(self, clips: list[np.ndarray], sections: np.ndarray, device: torch.device) -> np.ndarray:
        """Anomaly score of each whole-clip log-mel: the mean over the networks of the standardised
        distance to the section's normal clips."""
        return np.mean([knn.score(self._embed(network, clips, device), sections)
                        for network, knn in zip(self.networks_, self.knns_, strict=True)], axis=0)

    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        clips, inverse = np.unique(clip_of_row, return_inverse=True)
        sections = shard.clips["section"].to_numpy()[clips]
        scores = np.empty(len(clips))
        for first in range(0, len(clips), 256):  # bounded memory on large test shards
            part = slice(first, first + 256)
            scores[part] = self.score_clip_frames(load_clip_frames(shard, clips[part]), sections[part], device)
        return scores[inverse]  # every segment carries its clip's score, so any reducer returns it

    # --- checkpoint --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"networks": [network.state_dict() for network in self.networks_],
                "knns": [knn.state() for knn in self.knns_], "class_names": list(self.class_names_)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.class_names_ = list(state["class_names"])
        self.networks_ = []
        for weights in state["networks"]:
            network = build_network(self.config, int(self.feature_config_["n_mels"]))
            network.load_state_dict(weights)
            self.networks_.append(network.eval())
        self.knns_ = [DomainKnn.from_state(knn) for knn in state["knns"]]
