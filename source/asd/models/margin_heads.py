"""Angular-margin classification heads over embeddings: ArcFace, AdaCos and sub-cluster AdaCos.

All heads compare L2-normalised embeddings with L2-normalised class centres (cosine similarity) and turn
the cosines into logits for a softmax cross-entropy over auxiliary classes (section x attribute x domain).

Labels may be class indices ``[B]`` or soft targets ``[B, n_classes]`` (mixup). Soft rules, chosen so a
one-hot soft label gives exactly the hard-label result:

* ArcFace: class ``c`` gets ``s * (cos_c + y_c * (cos(theta_c + m) - cos_c))``: the margin is applied to each
  class in proportion to its label weight.
* AdaCos scale update: the "non-target" sum of ``exp(s * cos)`` weights every class by ``1 - y_c``; the
  median target angle uses the class with the largest label weight.

Use :func:`soft_cross_entropy` (or each head's ``loss``) as the training loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy with soft targets: ``-sum_c y_c log softmax(logits)_c`` per row.

    ``soft_targets`` may also be class indices ``[B]`` (then this equals ``F.cross_entropy``).
    ``reduction``: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` (per-row ``[B]``).
    """
    y = as_soft_labels(soft_targets, logits.shape[1], logits.dtype)
    loss = -(y * F.log_softmax(logits, dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def as_soft_labels(labels: Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class indices ``[B]`` -> one-hot ``[B, n_classes]``; a ``[B, n_classes]`` tensor passes through."""
    if labels.dim() == 1:
        if labels.dtype.is_floating_point:
            raise ValueError("1-D labels must be integer class indices")
        return F.one_hot(labels.long(), n_classes).to(dtype)
    if labels.dim() == 2 and labels.shape[1] == n_classes:
        return labels.to(dtype)
    raise ValueError(
        f"labels must be [B] indices or [B, {n_classes}] soft targets, got {tuple(labels.shape)}"
    )


class _CosineHead(nn.Module):
    """Shared part: ``n_centres`` learnable centres and cosine similarity to them."""

    def __init__(self, embedding_dim: int, n_centres: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(n_centres, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def _centre_cosine(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity to each class centre ``[B, n_classes]``."""
        return self._centre_cosine(embeddings)

    def logits_without_margin(self, embeddings: Tensor) -> Tensor:
        """Inference logits ``s * cos`` ``[B, n_classes]`` with the head's current scale."""
        return self.scale * self.cosine(embeddings)

    def loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean (soft) cross-entropy of the training logits."""
        return soft_cross_entropy(self(embeddings, labels), labels)


class ArcFaceHead(_CosineHead):
    """ArcFace (additive angular margin): target logit ``s * cos(theta + m)``, others ``s * cos(theta)``.

    When ``theta + m`` would exceed pi (where ``cos(theta + m)`` stops decreasing) the target logit falls
    back to ``s * (cos(theta) - m * sin(m))``, the usual continuous and monotonic replacement.
    """

    def __init__(self, embedding_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__(embedding_dim, n_classes)
        self.n_classes = n_classes
        self.scale = scale
        self.margin = margin

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Training logits with the margin applied to the (soft) target classes."""
        cos = self.cosine(embeddings)
        y = as_soft_labels(labels, self.n_classes, cos.dtype)
        m = self.margin
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-12))
        cos_m = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        cos_m = torch.where(cos > math.cos(math.pi - m), cos_m, cos - m * math.sin(m))
        return self.scale * (cos + y * (cos_m - cos))


def adacos_fixed_scale(n_logits: int) -> float:
    """AdaCos initial / fixed scale ``sqrt(2) * log(C - 1)`` (at least 1 for tiny C)."""
    return max(math.sqrt(2.0) * math.log(max(n_logits - 1, 2)), 1.0)


def adacos_scale_update(cos: Tensor, soft_labels: Tensor, scale: float, min_scale: float = 1.0) -> float:
    """One dynamic AdaCos scale update (Zhang et al., 2019).

    ``B_avg = mean_i sum_c (1 - y_ic) exp(s * cos_ic)`` with the current scale ``s``;
    ``theta_med`` = median over the batch of the angle to each row's target class (largest label weight);
    new ``s = log(B_avg) / cos(min(pi/4, theta_med))``, floored at ``min_scale`` (with very few classes
    ``B_avg`` can drop below 1, and a non-positive scale would make training diverge).
    """
    with torch.no_grad():
        cos, soft_labels = cos.double(), soft_labels.double()  # exp(s * cos) can be large
        b_avg = ((1.0 - soft_labels) * torch.exp(scale * cos)).sum(dim=1).mean()
        target_cos = cos.gather(1, soft_labels.argmax(dim=1, keepdim=True)).squeeze(1)
        theta_med = torch.acos(target_cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)).median()
        new = torch.log(b_avg.clamp(min=1e-12)) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
    return max(float(new), min_scale)


class AdaCosHead(_CosineHead):
    """AdaCos: no margin, logits ``s * cos`` with a scale ``s`` adapted from each training batch.

    In training mode (and with ``dynamic=True``) every ``forward`` first updates ``scale`` with
    :func:`adacos_scale_update` from the current batch, then returns logits with the updated scale. In
    eval mode the scale is frozen. ``scale`` is a buffer, so it is saved in the ``state_dict``.

    Note: with few classes the dynamic scale shrinks as training converges (the non-target sum
    ``B_avg`` falls towards 1), down to ``min_scale``; prefer many auxiliary classes, a higher
    ``min_scale`` or ``dynamic=False`` there.
    """

    def __init__(
        self, embedding_dim: int, n_classes: int, dynamic: bool = True, min_scale: float = 1.0
    ) -> None:
        super().__init__(embedding_dim, n_classes)
        self.n_classes = n_classes
        self.dynamic = dynamic
        self.min_scale = min_scale
        self.register_buffer("scale", torch.tensor(adacos_fixed_scale(n_classes)))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Training logits; updates the scale first when training and dynamic."""
        cos = self.cosine(embeddings)
        if self.training and self.dynamic:
            y = as_soft_labels(labels, self.n_classes, cos.dtype)
            self.scale.fill_(adacos_scale_update(cos.detach(), y, float(self.scale), self.min_scale))
        return self.scale * cos


class SubClusterAdaCosHead(_CosineHead):
    """Sub-cluster AdaCos (Wilkinghoff, 2021): ``n_subclusters`` centres per class, adaptive scale.

    Class logit rule: **log-sum-exp** over the class's sub-cluster logits, ``logit_c = log sum_k exp(s *
    cos_ck)``. A softmax over these equals summing the softmax probabilities of the sub-clusters of each
    class, so a sample only has to be close to *one* of its class's centres. The scale update treats every
    sub-cluster of a non-target class as non-target (``B_avg`` over all ``C*K`` centres, weights ``1 - y_c``)
    and uses the closest sub-cluster of the target class for the median angle. Initial scale
    ``sqrt(2) * log(C*K - 1)``. :meth:`cosine` returns the class-level cosine = max over sub-clusters.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        n_subclusters: int = 16,
        dynamic: bool = True,
        min_scale: float = 1.0,
    ) -> None:
        super().__init__(embedding_dim, n_classes * n_subclusters)
        self.n_classes = n_classes
        self.n_subclusters = n_subclusters
        self.dynamic = dynamic
        self.min_scale = min_scale
        self.register_buffer("scale", torch.tensor(adacos_fixed_scale(n_classes * n_subclusters)))

    def subcluster_cosine(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity to every centre, ``[B, n_classes, n_subclusters]``."""
        return self._centre_cosine(embeddings).view(-1, self.n_classes, self.n_subclusters)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Class-level cosine ``[B, n_classes]``: the closest sub-cluster of each class."""
        return self.subcluster_cosine(embeddings).amax(dim=2)

    def _class_logits(self, cos: Tensor) -> Tensor:
        return torch.logsumexp(self.scale * cos, dim=2)

    def logits_without_margin(self, embeddings: Tensor) -> Tensor:
        """Inference class logits ``[B, n_classes]`` (log-sum-exp over sub-clusters)."""
        return self._class_logits(self.subcluster_cosine(embeddings))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Training class logits; updates the scale first when training and dynamic."""
        cos = self.subcluster_cosine(embeddings)
        if self.training and self.dynamic:
            y = as_soft_labels(labels, self.n_classes, cos.dtype)
            self.scale.fill_(self._scale_update(cos.detach(), y))
        return self._class_logits(cos)

    def _scale_update(self, cos: Tensor, y: Tensor) -> float:
        s = float(self.scale)
        with torch.no_grad():
            cos, y = cos.double(), y.double()
            b_avg = ((1.0 - y).unsqueeze(2) * torch.exp(s * cos)).sum(dim=(1, 2)).mean()
            target = y.argmax(dim=1)
            target_cos = cos[torch.arange(cos.shape[0], device=cos.device), target].amax(dim=1)
            theta_med = torch.acos(target_cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)).median()
            new = torch.log(b_avg.clamp(min=1e-12)) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
        return max(float(new), self.min_scale)  # same floor as adacos_scale_update
