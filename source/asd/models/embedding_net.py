"""Compact residual CNN that maps log-mel spectrograms to embeddings for angular-margin training.

Input ``[B, n_mels, T]`` (T = 32 frames for a 1-second segment; any T >= 8 works, e.g. several
concatenated segments). The network:

1. normalises each sample's input level (per-sample mean/std over all bins and frames), so absolute gain
   differences between domains or microphones matter less, then applies a BatchNorm over mel bins (learned
   per-bin scale, relative spectral shape is kept);
2. runs a small ResNet (a stride-(2,1) stem and four residual stages, 3x3 convolutions);
3. pools over **time only** and keeps the frequency axis: a linear layer over (channel x frequency band)
   then knows *where* in the spectrum a pattern occurred, which matters for machine sounds that are
   mostly stationary tones (the idea of MobileFaceNet's global depthwise pooling, applied to frequency);
4. projects to ``embedding_dim`` with a BatchNorm'ed linear layer. ``forward(x, normalize=True)`` returns
   unit-length embeddings (what the cosine heads and the kNN scorer use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TIME_POOLS = ("mean", "max", "meanmax")


@dataclass(frozen=True)
class EmbeddingNetConfig:
    """Shape of :class:`EmbeddingNet`.

    ``channels`` are the widths of the stem and the four residual stages; ``strides`` the (freq, time)
    stride of each residual stage. With the defaults and 128 mels the frequency axis ends at 128/16 = 8 bands.
    """

    n_mels: int = 128
    embedding_dim: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    strides: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (2, 2), (2, 1))
    stem_stride: tuple[int, int] = (2, 1)
    dropout: float = 0.0
    input_norm: bool = True
    # How the time axis is pooled: "mean" (steady sounds), "max" (keeps short events such as a bearing's
    # knocks, which a mean over 10 s dilutes), or "meanmax" (both, concatenated).
    time_pool: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "strides", tuple(tuple(s) for s in self.strides))
        if self.time_pool not in TIME_POOLS:
            raise ValueError(f"time_pool must be one of {TIME_POOLS}, not {self.time_pool!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm + ReLU and an identity / 1x1-projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if in_ch != out_ch or stride != (1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def _out_len(n: int, stride: int) -> int:
    # Output length of a 3x3 (and 1x1) convolution with padding 1 and the given stride.
    return (n - 1) // stride + 1


class EmbeddingNet(nn.Module):
    """Log-mel ``[B, n_mels, T]`` -> embedding ``[B, embedding_dim]`` (see module docstring)."""

    def __init__(self, config: EmbeddingNetConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = config or EmbeddingNetConfig()
        if overrides:
            cfg = EmbeddingNetConfig(**{**cfg.__dict__, **overrides})  # type: ignore[arg-type]
        if len(cfg.channels) != len(cfg.strides) + 1:
            raise ValueError("channels must have one entry more than strides (stem + one per stage)")
        self.config = cfg
        self.input_bn = nn.BatchNorm1d(cfg.n_mels)
        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.channels[0], 3, stride=cfg.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(cfg.channels[0]),
            nn.ReLU(),
        )
        blocks = []
        n_freq = _out_len(cfg.n_mels, cfg.stem_stride[0])
        for i, stride in enumerate(cfg.strides):
            blocks.append(ResidualBlock(cfg.channels[i], cfg.channels[i + 1], stride))
            n_freq = _out_len(n_freq, stride[0])
        self.blocks = nn.Sequential(*blocks)
        self.n_freq_out = n_freq
        self.dropout = nn.Dropout(cfg.dropout)
        # Frequency-aware head: one weight per (channel, frequency band) after pooling over time.
        pooled_width = cfg.channels[-1] * n_freq * (2 if cfg.time_pool == "meanmax" else 1)
        self.projection = nn.Linear(pooled_width, cfg.embedding_dim, bias=False)
        self.output_bn = nn.BatchNorm1d(cfg.embedding_dim)

    def forward(self, x: Tensor, normalize: bool = False) -> Tensor:
        """Embed ``x`` of shape ``[B, n_mels, T]``; ``normalize=True`` returns unit-length rows."""
        if x.dim() != 3 or x.shape[1] != self.config.n_mels:
            raise ValueError(f"expected [B, {self.config.n_mels}, T], got {tuple(x.shape)}")
        if self.config.input_norm:
            # Per-sample level normalisation: removes the absolute gain, keeps spectral shape.
            mean = x.mean(dim=(1, 2), keepdim=True)
            std = x.std(dim=(1, 2), keepdim=True, unbiased=False)
            x = (x - mean) / (std + 1e-5)
        x = self.input_bn(x)
        h = self.blocks(self.stem(x.unsqueeze(1)))  # [B, C, F', T']
        h = self._pool_time(h).flatten(1)  # pool over time only -> [B, C, F'] -> [B, C * F'] (x2: meanmax)
        emb = self.output_bn(self.projection(self.dropout(h)))
        return F.normalize(emb, dim=1) if normalize else emb

    def _pool_time(self, h: Tensor) -> Tensor:
        if self.config.time_pool == "mean":
            return h.mean(dim=3)
        if self.config.time_pool == "max":
            return h.amax(dim=3)
        return torch.cat([h.mean(dim=3), h.amax(dim=3)], dim=1)

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


__all__ = ["EmbeddingNet", "EmbeddingNetConfig", "ResidualBlock"]

if __name__ == "__main__":  # quick size/speed check: python -m asd.models.embedding_net
    import time

    net = EmbeddingNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    batch = torch.randn(64, 128, 32)
    for i in range(6):
        t0 = time.perf_counter()
        opt.zero_grad()
        net(batch).pow(2).mean().backward()
        opt.step()
        if i:
            print(f"fwd+bwd batch 64: {time.perf_counter() - t0:.3f}s")
    print("params:", net.n_parameters())
