"""Discriminative embeddings + nearest-neighbour scoring: the state-of-the-art recipe of SPEC §6.

Training: a compact CNN (:class:`~asd.models.embedding_net.EmbeddingNet`) learns to tell apart the free
auxiliary classes of one machine type's normal clips (section x attribute x domain, see
:mod:`asd.models.embedding_data`) with an angular-margin head, mixup, class-balancing loss weights and a
self-supervised spectral-shift task that keeps something to learn even with a single class.

Scoring: the embedding of each segment is compared with the embeddings of the normal training segments
by cosine k-NN, against the source and the target bank separately, combined so that one threshold serves
both domains (:class:`~asd.models.knn.KnnCosineScorer`). A segment's score is that distance; the base
class reduces segments to clips. ``level="clip"`` instead scores the mean embedding of each clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asd.data import iterate_in_order, segment_rows_of, stream_segments
from asd.detector import Detector, TrainConfig
from asd.models.augment import mixup
from asd.models.embedding_data import augmented_labels, build_class_table, class_of_clips, class_weights
from asd.models.embedding_net import EmbeddingNet, EmbeddingNetConfig
from asd.models.knn import COMBINES, KnnCosineScorer
from asd.models.margin_heads import AdaCosHead, ArcFaceHead, SubClusterAdaCosHead, soft_cross_entropy
from asd.shard import Shard

HEADS = ("subcluster_adacos", "adacos", "arcface")
LEVELS = ("segment", "clip")


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
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    k: int = 1  # nearest neighbours averaged per bank
    combine: str = "min"  # "min" or "normalized" (see asd.models.knn)
    level: str = "segment"  # "segment": score each segment; "clip": score each clip's mean embedding

    def __post_init__(self) -> None:
        # Checkpoints and JSON configs give lists back; keep the dataclass hashable.
        object.__setattr__(self, "aux_shifts", tuple(int(s) for s in self.aux_shifts))
        for field_name, value, allowed in (("head", self.head, HEADS), ("combine", self.combine, COMBINES),
                                           ("level", self.level, LEVELS)):
            if value not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, not {value!r}")
        if not self.aux_shifts:
            raise ValueError("aux_shifts needs at least one entry; (0,) disables the auxiliary task")


class EmbeddingDetector(Detector):
    """Angular-margin embeddings + cosine k-NN. Fitted state: `network_`, `head_`, `knn_`, `class_names_`."""

    name = "embed"
    config_class = EmbeddingDetectorConfig

    def __init__(self, config: EmbeddingDetectorConfig = EmbeddingDetectorConfig()) -> None:
        super().__init__(config)
        self.network_: EmbeddingNet | None = None
        self.head_: nn.Module | None = None
        self.knn_: KnnCosineScorer | None = None
        self.class_names_: list[str] = []

    # --- building blocks ---------------------------------------------------------------------------
    def _build(self, n_mels: int, n_classes: int) -> tuple[EmbeddingNet, nn.Module]:
        cfg = self.config
        network = EmbeddingNet(EmbeddingNetConfig(n_mels=n_mels, embedding_dim=cfg.embedding_dim))
        n_labels = n_classes * len(cfg.aux_shifts)
        if cfg.head == "subcluster_adacos":
            head: nn.Module = SubClusterAdaCosHead(cfg.embedding_dim, n_labels, cfg.n_subclusters)
        elif cfg.head == "adacos":
            head = AdaCosHead(cfg.embedding_dim, n_labels)
        else:
            head = ArcFaceHead(cfg.embedding_dim, n_labels, cfg.arcface_scale, cfg.arcface_margin)
        return network, head

    @torch.no_grad()
    def _embed(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        """Unit-length embeddings of sorted segment rows, ``[len(rows), embedding_dim]`` float32."""
        network = self.network_.to(device).eval()
        out = [network(torch.from_numpy(mels).to(device), normalize=True).cpu().numpy()
               for mels, _ in iterate_in_order(shard, rows)]
        return np.concatenate(out) if out else np.zeros((0, self.config.embedding_dim), np.float32)

    @staticmethod
    def _clip_means(embeddings: np.ndarray, clip_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean embedding per clip (unique clips, sorted) and the index of each row's clip in that list."""
        clips, inverse = np.unique(clip_of_row, return_inverse=True)
        sums = np.zeros((len(clips), embeddings.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, embeddings)
        return (sums / np.bincount(inverse)[:, None]).astype(np.float32), inverse

    # --- training ----------------------------------------------------------------------------------
    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, train: TrainConfig,
             device: torch.device, log) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        clips = shard.clips
        self.class_names_ = build_class_table(clips, train_clips)
        n_classes, n_shifts = len(self.class_names_), len(cfg.aux_shifts)
        class_of_clip = class_of_clips(clips, self.class_names_)
        clip_of_row = shard.segments["clip_index"].to_numpy()
        train_rows = segment_rows_of(shard, train_clips)
        val_rows = segment_rows_of(shard, val_clips)
        val_rows = val_rows[class_of_clip[clip_of_row[val_rows]] >= 0]  # classes never trained: no val loss
        counts = np.bincount(class_of_clip[clip_of_row[train_rows]], minlength=n_classes)
        # One weight per (class, shift) label; a mixed sample's weight is its soft label times this.
        label_weight = torch.from_numpy(np.repeat(class_weights(counts, cfg.balance_power), n_shifts)).float()
        log(f"{n_classes} classes x {n_shifts} shifts; segments per class: "
            + ", ".join(f"{name}={n}" for name, n in zip(self.class_names_, counts, strict=True)))

        if n_classes * n_shifts == 1:
            log("warning: one class and no shift task: nothing to learn, the k-NN uses untrained embeddings")
        network, head = self._build(shard.feature_config.n_mels, n_classes)
        network.to(device)
        head.to(device)
        label_weight = label_weight.to(device)
        optimizer = torch.optim.AdamW([*network.parameters(), *head.parameters()], lr=cfg.learning_rate,
                                      weight_decay=cfg.weight_decay)
        epochs = train.epochs or cfg.epochs
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        rng = np.random.default_rng(train.seed)
        generator = torch.Generator().manual_seed(train.seed)
        # Validation loss: unshifted held-out segments (label = class x the zero shift, if there is one).
        zero = cfg.aux_shifts.index(0) if 0 in cfg.aux_shifts else None
        val_labels = None if zero is None else class_of_clip[clip_of_row[val_rows]] * n_shifts + zero
        bar = tqdm(range(epochs), desc=f"train embed {shard.machine}", unit="epoch", leave=False)
        for epoch in bar:
            start = time.perf_counter()
            network.train()
            head.train()
            total, count = 0.0, 0
            for mels, rows in stream_segments(shard, train_rows, rng):
                x_all = torch.from_numpy(mels)
                y_all = torch.from_numpy(class_of_clip[clip_of_row[rows]])
                for first in range(0, len(rows), cfg.batch_size):
                    x, classes = x_all[first:first + cfg.batch_size], y_all[first:first + cfg.batch_size]
                    if len(x) < 2:  # BatchNorm needs two samples
                        continue
                    x, labels = augmented_labels(x, classes, cfg.aux_shifts, generator)
                    x, soft = mixup(x, F.one_hot(labels, n_classes * n_shifts).float(), cfg.mixup_alpha,
                                    generator)
                    x, soft = x.to(device), soft.to(device)
                    weight = soft @ label_weight
                    per_sample = soft_cross_entropy(head(network(x), soft), soft, reduction="none")
                    loss = (per_sample * weight).sum() / weight.sum()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(x)
                    count += len(x)
            schedule.step()
            record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
            if len(val_rows):
                record["val_loss"] = self._val_loss(network, head, shard, val_rows, val_labels, device)
            self.history_.append(record)  # losses only: every numeric key becomes a curve in loss.png
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
                + f" seconds={time.perf_counter() - start:.1f}")
        self.network_, self.head_ = network.cpu().eval(), head.cpu().eval()
        self.knn_ = self._fit_knn(shard, train_rows, clip_of_row, device, train.seed)

    @torch.no_grad()
    def _val_loss(self, network: EmbeddingNet, head: nn.Module, shard: Shard, rows: np.ndarray,
                  labels: np.ndarray | None, device: torch.device) -> float:
        """Cross-entropy (without margin) of the unshifted held-out segments; NaN without a 0 shift."""
        if labels is None:
            return float("nan")
        network.eval()
        head.eval()
        total = 0.0
        for mels, chosen in iterate_in_order(shard, rows):
            logits = head.logits_without_margin(network(torch.from_numpy(mels).to(device)))
            target = torch.from_numpy(labels[np.searchsorted(rows, chosen)]).to(device)
            total += F.cross_entropy(logits, target, reduction="sum").item()
        return total / len(rows)

    def _fit_knn(self, shard: Shard, rows: np.ndarray, clip_of_row: np.ndarray, device: torch.device,
                 seed: int) -> KnnCosineScorer:
        """The normal banks: training segment (or clip-mean) embeddings, split by domain."""
        embeddings = self._embed(shard, rows, device)
        groups = clip_of_row[rows]
        if self.config.level == "clip":
            embeddings, _ = self._clip_means(embeddings, groups)
            groups = np.unique(groups)
        domains = np.where(shard.clips["domain"].to_numpy()[groups] == "target", "target", "source")
        return KnnCosineScorer(k=self.config.k, combine=self.config.combine, seed=seed).fit(
            embeddings, domains, groups)

    # --- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        embeddings = self._embed(shard, rows, device)
        if self.config.level == "segment":
            return self.knn_.score(embeddings)
        # Every segment of a clip gets its clip's score, so any reducer returns the clip score.
        means, inverse = self._clip_means(embeddings, shard.segments["clip_index"].to_numpy()[rows])
        return self.knn_.score(means)[inverse]

    # --- checkpoint --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        knn = self.knn_.state_dict()
        return {
            "network": self.network_.state_dict(),
            "head": self.head_.state_dict(),
            "knn": {key: torch.from_numpy(np.asarray(value)) for key, value in knn.items()
                    if key != "combine"},
            "knn_combine": str(knn["combine"]),
            "class_names": list(self.class_names_),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.class_names_ = list(state["class_names"])
        self.network_, self.head_ = self._build(int(self.feature_config_["n_mels"]), len(self.class_names_))
        self.network_.load_state_dict(state["network"])
        self.head_.load_state_dict(state["head"])
        self.network_.eval()
        self.head_.eval()
        knn = {key: value.numpy() for key, value in state["knn"].items()}
        knn["combine"] = state["knn_combine"]
        self.knn_ = KnnCosineScorer.from_state(knn)
