"""Training one two-branch network (:mod:`asd.models.twobranch_net`): whole-clip waveforms classified into
the free auxiliary classes (machine type x section x attribute x domain) by a sub-cluster AdaCos head,
with mixup and feature exchange.

Feature exchange (after Wilkinghoff's FeatEx): in every batch each clip's STFT-branch embedding is also
paired with another clip's spectrum-branch embedding. The head learns twice as many classes: a clip whose
two embeddings belong together keeps its class, an exchanged pair belongs to the "exchanged" copy of both
partners' classes (half each). To tell the two apart, each branch must carry what is specific to its clip,
a self-supervised task that needs no label beyond the free ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from asd.models.augment import mixup
from asd.models.embedding_data import class_weights
from asd.models.margin_heads import SubClusterAdaCosHead
from asd.models.training import Adam, cosine_learning_rate, weighted_soft_loss
from asd.models.twobranch_net import TwoBranchNet, TwoBranchNetConfig

INT16_SCALE = 1.0 / 32768.0


def exchanged_targets(soft: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Targets ``[2B, 2C]`` of a batch and its exchanged pairs: the batch's own classes in the first C
    columns; an exchanged pair (spectrum of i, STFT of ``partner[i]``) half each of both clips' classes in
    the "exchanged" copy (the last C columns)."""
    zeros = torch.zeros_like(soft)
    return torch.cat([torch.cat([soft, zeros], dim=1),
                      torch.cat([zeros, 0.5 * soft + 0.5 * soft[partner]], dim=1)])


def train_two_branch(waveforms: np.ndarray, labels: np.ndarray, n_classes: int, cfg, epochs: int, seed: int,
                     device: torch.device, log: Callable[[str], None], desc: str = "twobranch"
                     ) -> tuple[TwoBranchNet, list[dict]]:
    """Train one network from scratch (seeded) on int16 clip waveforms ``[n, L]`` and their class indices;
    returns it (on the CPU, in eval mode) and its loss history. ``cfg`` is a TwoBranchDetectorConfig."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    network = TwoBranchNet(TwoBranchNetConfig(clip_samples=waveforms.shape[1], branch_dim=cfg.branch_dim)).to(device)
    n_outputs = 2 * n_classes if cfg.feature_exchange else n_classes
    head = SubClusterAdaCosHead(2 * cfg.branch_dim, n_outputs, cfg.n_subclusters).to(device)
    optimizer = Adam([*network.parameters(), *head.parameters()], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    weights = class_weights(np.bincount(labels, minlength=n_classes), cfg.balance_power)
    label_weight = torch.from_numpy(np.tile(weights, n_outputs // n_classes)).float().to(device)
    history: list[dict] = []
    for epoch in tqdm(range(epochs), desc=f"train {desc}", unit="epoch", leave=False):
        start = time.perf_counter()
        optimizer.lr = cosine_learning_rate(cfg.learning_rate, epoch, epochs)
        network.train()
        head.train()
        order = rng.permutation(len(waveforms))
        total, count = 0.0, 0
        for first in range(0, len(order), cfg.batch_size):
            chosen = np.sort(order[first:first + cfg.batch_size])
            if len(chosen) < 2:  # BatchNorm needs two samples
                continue
            x = torch.from_numpy(waveforms[chosen].astype(np.float32) * INT16_SCALE)
            soft = F.one_hot(torch.from_numpy(labels[chosen]), n_classes).float()
            x, soft = mixup(x, soft, cfg.mixup_alpha, generator)
            spectrum, stft = network(x.to(device), cfg.stft_crop_frames, generator)
            soft = soft.to(device)
            if cfg.feature_exchange:
                partner = torch.randperm(len(chosen), generator=generator).to(device)
                embeddings = torch.cat([TwoBranchNet.joint(spectrum, stft),
                                        TwoBranchNet.joint(spectrum, stft[partner])])
                soft = exchanged_targets(soft, partner)
            else:
                embeddings = TwoBranchNet.joint(spectrum, stft)
            loss = weighted_soft_loss(head(embeddings, soft), soft, label_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chosen)
            count += len(chosen)
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1)})
        log(f"epoch={epoch + 1} train_loss={history[-1]['train_loss']:.5g} "
            f"seconds={time.perf_counter() - start:.1f} clips={len(waveforms)}")
    return network.cpu().eval(), history
