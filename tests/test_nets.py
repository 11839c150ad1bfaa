"""Tests for the DCASE baseline autoencoder pieces and the embedding CNN."""

from __future__ import annotations

import pytest
import torch

from asd.models.autoencoder_net import (
    DcaseAutoencoder,
    frames_to_vectors,
    per_dim_error,
    reconstruction_error,
)
from asd.models.embedding_net import EmbeddingNet, EmbeddingNetConfig


def test_frames_to_vectors_shape_and_frame_major_order() -> None:
    # value = 1000*b + 10*t + m identifies batch item b, frame t and mel bin m
    b, m, t = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(6), indexing="ij")
    logmel = (1000 * b + 10 * t + m).float()  # [2, 3 mels, 6 frames]
    vec = frames_to_vectors(logmel, context=4)
    assert vec.shape == (2 * 3, 3 * 4)
    # row 0: item 0, frames 0..3, each frame's 3 mels contiguous
    assert vec[0].tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32]
    # row 4 = item 1 (rows 3..5), start frame 1
    assert vec[4].tolist() == [1010, 1011, 1012, 1020, 1021, 1022, 1030, 1031, 1032, 1040, 1041, 1042]


def test_frames_to_vectors_dcase_sizes() -> None:
    vec = frames_to_vectors(torch.randn(4, 128, 32), context=5)
    assert vec.shape == (4 * 28, 640)


def test_autoencoder_shapes_and_layout() -> None:
    ae = DcaseAutoencoder()
    linears = [mod for mod in ae.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
        (8, 128), (128, 128), (128, 128), (128, 128), (128, 640),
    ]  # fmt: skip
    n_bn = sum(isinstance(mod, torch.nn.BatchNorm1d) for mod in ae.modules())
    assert n_bn == 9  # every layer but the output
    x = torch.randn(10, 640)
    assert ae(x).shape == (10, 640)
    assert ae.encode(x).shape == (10, 8)


def test_reconstruction_errors() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x_hat = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert per_dim_error(x, x_hat).tolist() == [[1.0, -2.0], [-1.0, -1.0]]
    assert per_dim_error(x, x_hat, squared=True).tolist() == [[1.0, 4.0], [1.0, 1.0]]
    assert reconstruction_error(x, x_hat).tolist() == [2.5, 1.0]


def test_autoencoder_overfits_tiny_dataset() -> None:
    torch.manual_seed(0)
    # low-rank data (rank 4 < bottleneck 8) so a good reconstruction exists
    data = torch.randn(64, 4) @ torch.randn(4, 640)
    ae = DcaseAutoencoder()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    first = None
    for _ in range(300):
        opt.zero_grad()
        loss = reconstruction_error(data, ae(data)).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first


def test_embedding_net_shapes_and_finite() -> None:
    torch.manual_seed(0)
    net = EmbeddingNet()
    assert 300_000 <= net.n_parameters() <= 1_500_000
    for n_frames in (32, 64):
        out = net(torch.randn(4, 128, n_frames))
        assert out.shape == (4, 128)
        assert torch.isfinite(out).all()
    unit = net.eval()(torch.randn(3, 128, 32), normalize=True)
    assert torch.allclose(unit.norm(dim=1), torch.ones(3), atol=1e-5)


def test_embedding_net_custom_dim_and_few_mels() -> None:
    net = EmbeddingNet(EmbeddingNetConfig(n_mels=64, embedding_dim=32)).eval()
    assert net(torch.randn(2, 64, 40)).shape == (2, 32)


def test_embedding_net_deterministic_with_seed() -> None:
    x = torch.randn(3, 128, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(EmbeddingNet().eval()(x))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    assert not torch.allclose(EmbeddingNet().eval()(x), outs[0])


def test_embedding_net_ignores_input_gain() -> None:
    # per-sample input normalisation: a level offset and a dB scaling change nothing
    torch.manual_seed(0)
    net = EmbeddingNet().eval()
    x = torch.randn(2, 128, 32)
    assert torch.allclose(net(x), net(2.0 * x + 30.0), atol=1e-4)


def test_embedding_net_time_pooling() -> None:
    # Every pooling gives the embedding size; meanmax feeds both poolings to the projection.
    torch.manual_seed(0)
    x = torch.randn(2, 64, 48)
    nets = {}
    for pool in ("mean", "max", "meanmax"):
        torch.manual_seed(0)
        nets[pool] = EmbeddingNet(EmbeddingNetConfig(n_mels=64, embedding_dim=16, time_pool=pool)).eval()
        assert nets[pool](x).shape == (2, 16)
    assert nets["meanmax"].projection.in_features == 2 * nets["mean"].projection.in_features
    h = torch.randn(2, 3, 4, 10)
    torch.testing.assert_close(nets["max"]._pool_time(h), h.amax(dim=3))
    torch.testing.assert_close(nets["meanmax"]._pool_time(h), torch.cat([h.mean(dim=3), h.amax(dim=3)], dim=1))
    with pytest.raises(ValueError, match="time_pool"):
        EmbeddingNetConfig(time_pool="median")
