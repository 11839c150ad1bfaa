"""Mixup for spectrogram batches with soft labels, driven by an explicit seeded generator; SMOTE-style
points between the few clips of a sparse domain."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import betaincinv
from torch import Tensor


def sample_beta(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` draws from Beta(alpha, alpha) by inverse-CDF sampling of uniforms from ``generator``.

    (``torch.distributions.Beta`` cannot take a generator, so this keeps mixup reproducible per seed.)
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.from_numpy(betaincinv(alpha, alpha, u.numpy()))


def mixup(
    x: Tensor,
    y_onehot: Tensor,
    alpha: float,
    generator: torch.Generator,
    per_sample: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mix each sample with a randomly permuted partner: ``lam * a + (1 - lam) * b`` for inputs and labels.

    Args:
        x: ``[B, ...]`` inputs (e.g. log-mel ``[B, n_mels, T]``).
        y_onehot: ``[B, n_classes]`` one-hot (or already soft) labels.
        alpha: Beta(alpha, alpha) concentration; ``alpha <= 0`` disables mixing (returns clones).
        generator: CPU ``torch.Generator``; the same seed gives the same partners and weights.
        per_sample: one weight per sample (default) or one weight for the whole batch (original paper).

    Returns:
        ``(x_mixed, y_mixed)`` with the shapes and dtypes of the inputs (labels as floating point).
    """
    if x.shape[0] != y_onehot.shape[0]:
        raise ValueError(f"batch size mismatch: x {x.shape[0]} vs y {y_onehot.shape[0]}")
    y = y_onehot if y_onehot.dtype.is_floating_point else y_onehot.float()
    if alpha <= 0 or x.shape[0] < 2:
        return x.clone(), y.clone()
    batch = x.shape[0]
    perm = torch.randperm(batch, generator=generator).to(x.device)
    lam = sample_beta(alpha, batch if per_sample else 1, generator).expand(batch)
    lam_x = lam.to(device=x.device, dtype=x.dtype).view(batch, *([1] * (x.dim() - 1)))
    lam_y = lam.to(device=y.device, dtype=y.dtype).view(batch, 1)
    return lam_x * x + (1 - lam_x) * x[perm], lam_y * y + (1 - lam_y) * y[perm]


def points_between(x: np.ndarray, per_row: int, rng: np.random.Generator) -> np.ndarray:
    """``per_row * len(x)`` points, each at a random place on the segment between two distinct rows of
    ``x`` (SMOTE-style); none when there are fewer than two rows."""
    n = len(x)
    if n < 2 or per_row < 1:
        return np.zeros((0, *x.shape[1:]), dtype=x.dtype)
    first = rng.integers(0, n, n * per_row)
    second = (first + rng.integers(1, n, n * per_row)) % n  # another row
    weight = rng.random((n * per_row, 1))
    return x[first] + weight * (x[second] - x[first])
