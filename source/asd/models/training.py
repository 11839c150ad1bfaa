"""Pieces shared by the training loops: stopping when the held-out loss stops improving, Adam, the cosine
learning-rate schedule and the class-weighted soft cross-entropy of the margin heads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class EarlyStopping:
    """Stop when the monitored loss has not improved by `min_delta` (relative) for `patience` epochs.

    The weights of the epoch with the lowest loss are kept (copied to the CPU) and restored by
    :meth:`restore`. With `fixed=True` the loop runs its full length and the last weights stay: that is
    what an explicit epoch count asks for.
    """

    patience: int
    min_delta: float
    fixed: bool = False
    best_value: float = math.inf
    best_epoch: int = 0
    epochs_run: int = 0
    _reference: float = math.inf  # last value that counted as an improvement
    _waited: int = 0
    _best_state: dict | None = field(default=None, repr=False)

    def step(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record epoch `epoch` (1-based) with loss `value`; True when training should stop now."""
        self.epochs_run = epoch
        if not math.isfinite(value):
            self._waited += 1
        else:
            if value < self.best_value:
                self.best_value, self.best_epoch = value, epoch
                if not self.fixed:
                    self._best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if value < self._reference * (1.0 - self.min_delta) or not math.isfinite(self._reference):
                self._reference, self._waited = value, 0
            else:
                self._waited += 1
        return not self.fixed and self._waited >= self.patience

    @property
    def chosen_epoch(self) -> int:
        """The epoch whose weights the model ends with."""
        return self.epochs_run if self.fixed or self._best_state is None else self.best_epoch

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into `model` (nothing to do for a fixed epoch count)."""
        if not self.fixed and self._best_state is not None:
            model.load_state_dict(self._best_state)

    def summary(self) -> dict:
        """Plain values for checkpoints and logs."""
        return {"epochs_run": self.epochs_run, "chosen_epoch": self.chosen_epoch,
                "best_loss": float(self.best_value), "stopped_early": bool(self._waited >= self.patience
                                                                           and not self.fixed),
                "fixed_epochs": bool(self.fixed), "patience": int(self.patience),
                "min_delta": float(self.min_delta)}


class Adam:
    """Adam (Kingma & Ba), the update of `torch.optim.Adam` with its defaults (no amsgrad); a positive
    `weight_decay` is decoupled, as in `torch.optim.AdamW` (parameters shrink by `lr * weight_decay`).

    Why not `torch.optim.Adam`: its first step imports `torch._dynamo` (and sympy), ~110 MiB of resident
    memory a CPU training run never uses, against a 1 GB budget per stage. Same arithmetic, checked
    against torch's in the tests.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.step_count)
        for p, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            if self.weight_decay:
                p.mul_(1 - self.lr * self.weight_decay)
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-self.lr / bias_correction1)


def cosine_learning_rate(base: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) under a cosine schedule from ``base`` towards 0."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def weighted_soft_loss(logits: torch.Tensor, soft: torch.Tensor, label_weight: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy, each sample weighted by its soft label times the per-label weights (a
    mixed sample's weight mixes its classes' weights)."""
    from asd.models.margin_heads import soft_cross_entropy

    weight = soft @ label_weight
    return (soft_cross_entropy(logits, soft, reduction="none") * weight).sum() / weight.sum()
