"""Training an embedding network: random crops of whole-clip log-mels, classified into the free auxiliary
classes (machine type x section x attribute x domain, times the spectral-shift task) by an angular-margin
head, with mixup and class-balancing weights. The network alone is kept; the head is only the teacher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asd.models.augment import mixup
from asd.models.clip_crops import random_crops
from asd.models.embedding_data import augmented_labels, class_weights
from asd.models.embedding_net import EmbeddingNet, EmbeddingNetConfig
from asd.models.margin_heads import AdaCosHead, ArcFaceHead, SubClusterAdaCosHead
from asd.models.training import Adam, cosine_learning_rate, weighted_soft_loss


@dataclass
class LabelledClips:
    """Whole-clip log-mels ``[n_mels, T]`` (float16 in memory) and one class index per clip."""

    frames: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def build_head(cfg, n_labels: int) -> nn.Module:
    """The angular-margin head named by ``cfg.head`` (an EmbeddingDetectorConfig)."""
    if cfg.head == "subcluster_adacos":
        return SubClusterAdaCosHead(cfg.embedding_dim, n_labels, cfg.n_subclusters)
    if cfg.head == "adacos":
        return AdaCosHead(cfg.embedding_dim, n_labels)
    return ArcFaceHead(cfg.embedding_dim, n_labels, cfg.arcface_scale, cfg.arcface_margin)


def build_network(cfg, n_mels: int) -> EmbeddingNet:
    return EmbeddingNet(EmbeddingNetConfig(n_mels=n_mels, embedding_dim=cfg.embedding_dim, time_pool=cfg.time_pool,
                                           input_norm=cfg.input_norm))


@torch.no_grad()
def validation_loss(network: EmbeddingNet, head: nn.Module, data: LabelledClips, cfg, zero_shift: int | None,
                    device: torch.device) -> float:
    """Cross-entropy without margin on fixed crops of the held-out clips (NaN without a zero shift)."""
    if zero_shift is None or not len(data):
        return float("nan")
    network.eval()
    head.eval()
    rng = np.random.default_rng(0)  # the same crops every epoch
    total = 0.0
    for first in range(0, len(data), cfg.batch_size):
        chosen = np.arange(first, min(first + cfg.batch_size, len(data)))
        x = torch.from_numpy(random_crops(data.frames, chosen, cfg.crop_frames, rng)).to(device)
        target = torch.from_numpy(data.labels[chosen] * len(cfg.aux_shifts) + zero_shift).to(device)
        total += F.cross_entropy(head.logits_without_margin(network(x)), target, reduction="sum").item()
    return total / len(data)


def train_network(train_set: LabelledClips, val_set: LabelledClips, n_classes: int, cfg, epochs: int,
                  seed: int, device: torch.device, log: Callable[[str], None],
                  desc: str = "embed") -> tuple[EmbeddingNet, list[dict]]:
    """Train one network from scratch (seeded); returns it (on the CPU, in eval mode) and its loss history."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    n_shifts = len(cfg.aux_shifts)
    n_mels = train_set.frames[0].shape[0]
    network, head = build_network(cfg, n_mels).to(device), build_head(cfg, n_classes * n_shifts).to(device)
    optimizer = Adam([*network.parameters(), *head.parameters()], lr=cfg.learning_rate,
                     weight_decay=cfg.weight_decay)
    counts = np.bincount(train_set.labels, minlength=n_classes)
    # One weight per (class, shift) label; a mixed sample's weight is its soft label times this.
    label_weight = torch.from_numpy(np.repeat(class_weights(counts, cfg.balance_power), n_shifts)).float().to(device)
    zero_shift = cfg.aux_shifts.index(0) if 0 in cfg.aux_shifts else None
    history: list[dict] = []
    for epoch in tqdm(range(epochs), desc=f"train {desc}", unit="epoch", leave=False):
        start = time.perf_counter()
        optimizer.lr = cosine_learning_rate(cfg.learning_rate, epoch, epochs)
        network.train()
        head.train()
        order = np.concatenate([rng.permutation(len(train_set)) for _ in range(cfg.crops_per_clip)])
        total, count = 0.0, 0
        for first in range(0, len(order), cfg.batch_size):
            chosen = order[first:first + cfg.batch_size]
            if len(chosen) < 2:  # BatchNorm needs two samples
                continue
            x = torch.from_numpy(random_crops(train_set.frames, chosen, cfg.crop_frames, rng))
            x, labels = augmented_labels(x, torch.from_numpy(train_set.labels[chosen]), cfg.aux_shifts, generator)
            x, soft = mixup(x, F.one_hot(labels, n_classes * n_shifts).float(), cfg.mixup_alpha, generator)
            x, soft = x.to(device), soft.to(device)
            loss = weighted_soft_loss(head(network(x), soft), soft, label_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if len(val_set):
            record["val_loss"] = validation_loss(network, head, val_set, cfg, zero_shift, device)
        history.append(record)
        log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            + f" seconds={time.perf_counter() - start:.1f}")
    return network.cpu().eval(), history
