"""Tests for the angular-margin heads, soft cross-entropy and mixup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asd.models.augment import mixup
from asd.models.margin_heads import (
    AdaCosHead,
    ArcFaceHead,
    SubClusterAdaCosHead,
    adacos_fixed_scale,
    soft_cross_entropy,
)


def _cos(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T


def test_arcface_zero_margin_is_scaled_cosine() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, scale=16.0, margin=0.0)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    expected = 16.0 * _cos(emb, head.weight)
    assert torch.allclose(head(emb, labels), expected, atol=1e-5)
    assert torch.allclose(head.logits_without_margin(emb), expected, atol=1e-6)


def test_arcface_margin_reduces_only_target_logit() -> None:
    head = ArcFaceHead(2, 3, scale=10.0, margin=0.3)
    with torch.no_grad():  # centres at angles 0, 90 and 180 degrees
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    theta = 0.4
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits = head(emb, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10.0 * math.cos(theta + 0.3), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10.0 * math.sin(theta), abs=1e-5)  # non-target unchanged
    assert logits[0, 2].item() == pytest.approx(-10.0 * math.cos(theta), abs=1e-5)
    # beyond pi - m the target logit uses the monotonic fallback cos(theta) - m sin(m)
    near0 = torch.tensor([[math.cos(0.2), math.sin(0.2)]])
    far = head(near0, torch.tensor([2]))  # angle to class 2 is pi - 0.2 > pi - 0.3
    assert far[0, 2].item() == pytest.approx(10.0 * (-math.cos(0.2) - 0.3 * math.sin(0.3)), abs=1e-5)
    # ... and it is continuous with cos(theta + m) at theta = pi - m
    edge = torch.tensor([[math.cos(0.3 + 1e-4), math.sin(0.3 + 1e-4)]])
    assert head(edge, torch.tensor([2]))[0, 2].item() == pytest.approx(-10.0, abs=1e-2)


def test_adacos_scale_update_matches_formula() -> None:
    torch.manual_seed(0)
    n_classes = 4
    head = AdaCosHead(3, n_classes)
    s0 = math.sqrt(2) * math.log(n_classes - 1)
    assert float(head.scale) == pytest.approx(s0)
    emb, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 1])
    cos = _cos(emb, head.weight).detach().double()
    non_target = torch.ones_like(cos).scatter_(1, labels[:, None], 0.0)
    b_avg = (non_target * torch.exp(s0 * cos)).sum(1).mean()
    theta_med = torch.acos(cos[torch.arange(5), labels]).median()
    expected = max(float(torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))), 1.0)
    logits = head.train()(emb, labels)
    assert float(head.scale) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(logits, expected * cos.float(), atol=1e-4)
    head.eval()(emb, labels)  # eval: frozen scale
    assert float(head.scale) == pytest.approx(expected, rel=1e-5)
    assert "scale" in head.state_dict()


def test_subcluster_shapes_and_logsumexp_rule() -> None:
    torch.manual_seed(0)
    head = SubClusterAdaCosHead(8, n_classes=3, n_subclusters=4).eval()
    assert float(head.scale) == pytest.approx(adacos_fixed_scale(12))
    emb = torch.randn(5, 8)
    sub = head.subcluster_cosine(emb)
    assert sub.shape == (5, 3, 4)
    logits = head.logits_without_margin(emb)
    assert logits.shape == (5, 3)
    assert torch.allclose(logits, torch.logsumexp(head.scale * sub, dim=2), atol=1e-5)
    assert torch.allclose(head.cosine(emb), sub.amax(dim=2))
    # softmax over class logits = sum of sub-cluster softmax probabilities of each class
    p_sub = torch.softmax((head.scale * sub).reshape(5, 12), dim=1).reshape(5, 3, 4).sum(2)
    assert torch.allclose(torch.softmax(logits, dim=1), p_sub, atol=1e-6)
    head.train()(emb, torch.tensor([0, 1, 2, 0, 1]))
    assert float(head.scale) != pytest.approx(adacos_fixed_scale(12))  # dynamic update happened


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArcFaceHead(8, 3, scale=20.0, margin=0.4),
        lambda: AdaCosHead(8, 3),
        lambda: SubClusterAdaCosHead(8, 3, n_subclusters=2),
    ],
)
def test_one_hot_soft_labels_equal_index_labels(make) -> None:
    torch.manual_seed(0)
    head_a = make().train()
    head_b = make().train()
    head_b.load_state_dict(head_a.state_dict())
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 2, 1, 0])
    hard = head_a(emb, labels)
    soft = head_b(emb, F.one_hot(labels, 3).float())
    assert torch.allclose(hard, soft, atol=1e-5)
    assert float(head_a.scale) == pytest.approx(float(head_b.scale))  # same adaptive-scale update
    assert soft_cross_entropy(hard, labels).item() == pytest.approx(F.cross_entropy(hard, labels).item())


def test_arcface_soft_margin_interpolates() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(4, 2, scale=10.0, margin=0.5)
    emb = torch.randn(1, 4)
    y = torch.tensor([[0.25, 0.75]])
    plain = head.logits_without_margin(emb)
    full0, full1 = head(emb, torch.tensor([0])), head(emb, torch.tensor([1]))
    mixed = head(emb, y)
    expected0 = 0.75 * plain[0, 0].item() + 0.25 * full0[0, 0].item()
    expected1 = 0.25 * plain[0, 1].item() + 0.75 * full1[0, 1].item()
    assert mixed[0, 0].item() == pytest.approx(expected0, abs=1e-5)
    assert mixed[0, 1].item() == pytest.approx(expected1, abs=1e-5)


def test_soft_cross_entropy_is_weighted_ce() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]])
    ce0 = F.cross_entropy(logits, torch.tensor([0, 2]), reduction="none")
    ce1 = F.cross_entropy(logits, torch.tensor([1, 2]), reduction="none")
    expected = torch.tensor([0.3 * ce0[0] + 0.7 * ce1[0], ce0[1]])
    assert torch.allclose(soft_cross_entropy(logits, y, reduction="none"), expected)
    assert soft_cross_entropy(logits, y).item() == pytest.approx(expected.mean().item())


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArcFaceHead(4, 3, scale=10.0, margin=0.2),
        lambda: AdaCosHead(4, 3),
        lambda: SubClusterAdaCosHead(4, 3, n_subclusters=3),
    ],
)
def test_tiny_embedding_and_head_separate_three_classes(make) -> None:
    torch.manual_seed(0)
    centres = 1.5 * torch.randn(3, 10)  # overlapping enough that an untrained model is far from 95 %
    labels = torch.arange(3).repeat_interleave(40)
    x = centres[labels] + torch.randn(120, 10)
    encoder, head = torch.nn.Linear(10, 4), make()
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        xm, ym = mixup(x, F.one_hot(labels, 3).float(), alpha=0.2, generator=gen)
        opt.zero_grad()
        head.loss(encoder(xm), ym).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        pred = head.logits_without_margin(encoder(x)).argmax(1)
    assert (pred == labels).float().mean().item() > 0.95


def test_mixup_seeded_and_consistent() -> None:
    x = torch.arange(8, dtype=torch.float32).view(4, 2)
    y = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    a = mixup(x, y, 0.4, torch.Generator().manual_seed(7))
    b = mixup(x, y, 0.4, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    xm, ym = a
    assert torch.allclose(ym.sum(1), torch.ones(4))
    # labels tell the weights: x_mixed = sum_c y_c * x_c since class c is sample c
    assert torch.allclose(xm, ym @ x, atol=1e-5)
    xs, ys = mixup(x, y, 0.4, torch.Generator().manual_seed(7), per_sample=False)
    assert torch.allclose(xs, ys @ x, atol=1e-5)
    x0, y0 = mixup(x, y, 0.0, torch.Generator().manual_seed(7))
    assert torch.equal(x0, x) and torch.equal(y0, y)
