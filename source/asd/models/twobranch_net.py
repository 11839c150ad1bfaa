"""The two-branch embedding network of the best from-scratch DCASE systems (SPEC §6; Wilkinghoff's DCASE
2023/2024 systems), from the cached waveform.

* **Spectrum branch**: the magnitude spectrum of the *whole clip* at full FFT resolution (a 10 s clip at
  16 kHz gives 80,001 bins, 0.1 Hz apart), log-compressed and level-normalised, read by strided 1-D
  convolutions. It sees narrow tonal changes that mel bands and short STFT frames blur.
* **STFT branch**: the log-magnitude STFT (``n_fft`` 1024, hop 512: 513 linear bins) read by the residual
  CNN of :class:`~asd.models.embedding_net.EmbeddingNet` (pooled over time, frequency-aware head), with a
  coarser first stride so that it costs what the log-mel network costs.

Each branch gives an embedding of ``branch_dim``; the clip's embedding is the two, each unit length,
side by side. Keeping them apart lets training exchange branch embeddings between clips (feature exchange,
:mod:`asd.models.twobranch_train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asd.models.embedding_net import EmbeddingNet, EmbeddingNetConfig

MIN_CLIP_SAMPLES = 12288  # the spectrum branch's three strided convolutions need 6,145 bins


@dataclass(frozen=True)
class TwoBranchNetConfig:
    """Shape of :class:`TwoBranchNet`. ``clip_samples`` is the spectrum branch's fixed input length
    (clips are wrapped or cut to it)."""

    clip_samples: int = 160000
    n_fft: int = 1024
    hop_length: int = 512
    branch_dim: int = 128
    spectrum_channels: tuple[int, ...] = (32, 64, 128)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spectrum_channels", tuple(int(c) for c in self.spectrum_channels))
        if self.clip_samples < MIN_CLIP_SAMPLES:
            raise ValueError(f"the two-branch network needs clips of at least {MIN_CLIP_SAMPLES} samples (0.77 s "
                             f"at 16 kHz) for its spectrum convolutions, got {self.clip_samples}")


def _log_level_normalised(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """log magnitude with each sample's mean and spread removed (gain differences matter less)."""
    x = torch.log(x + 1e-6)
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-5)


class SpectrumBranch(nn.Module):
    """``[B, L]`` waveform -> ``[B, branch_dim]``: strided 1-D convolutions over the whole-clip spectrum,
    then a linear layer over (channel x frequency region), which keeps *where* in the spectrum a pattern is."""

    def __init__(self, config: TwoBranchNetConfig) -> None:
        super().__init__()
        layers, width, length = [], 1, config.clip_samples // 2 + 1
        for channels, (kernel, stride) in zip(config.spectrum_channels, ((256, 64), (32, 4), (16, 4)), strict=False):
            layers += [nn.Conv1d(width, channels, kernel, stride=stride, bias=False), nn.BatchNorm1d(channels),
                       nn.ReLU()]
            width, length = channels, (length - kernel) // stride + 1
        self.convolutions = nn.Sequential(*layers)
        self.projection = nn.Linear(width * length, config.branch_dim, bias=False)
        self.output_bn = nn.BatchNorm1d(config.branch_dim)

    def forward(self, waveform: Tensor) -> Tensor:
        spectrum = _log_level_normalised(torch.fft.rfft(waveform, dim=1).abs(), dims=(1,))
        return self.output_bn(self.projection(self.convolutions(spectrum.unsqueeze(1)).flatten(1)))


class TwoBranchNet(nn.Module):
    """``forward(waveform [B, L], stft_frames)`` -> (spectrum embedding, STFT embedding), each
    ``[B, branch_dim]``; ``embed`` gives the clip's unit-length joint embedding ``[B, 2 * branch_dim]``.

    ``stft_frames`` > 0 crops the STFT branch's input to that many frames at a random place (training: a
    cheaper, augmented view); 0 uses the whole clip. The spectrum branch always reads the whole clip.
    """

    def __init__(self, config: TwoBranchNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or TwoBranchNetConfig()
        self.spectrum = SpectrumBranch(self.config)
        # A (4, 2) stem stride: 513 linear bins cost what 128 mel bands cost at (2, 1) (35 ms per 4 s crop
        # forward + backward on one CPU thread, against 200 ms at (2, 1)).
        self.stft = EmbeddingNet(EmbeddingNetConfig(n_mels=self.config.n_fft // 2 + 1,
                                                    embedding_dim=self.config.branch_dim, stem_stride=(4, 2)))
        self.register_buffer("window", torch.hann_window(self.config.n_fft), persistent=False)

    def log_stft(self, waveform: Tensor) -> Tensor:
        """``[B, n_fft / 2 + 1, T]`` log-magnitude STFT (the level normalisation is the CNN's own)."""
        stft = torch.stft(waveform, self.config.n_fft, self.config.hop_length, window=self.window,
                          center=False, return_complex=True)
        return torch.log(stft.abs() + 1e-6)

    def forward(self, waveform: Tensor, stft_frames: int = 0,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if waveform.dim() != 2 or waveform.shape[1] != self.config.clip_samples:
            raise ValueError(f"expected [B, {self.config.clip_samples}] waveforms, got {tuple(waveform.shape)}")
        frames = self.log_stft(waveform)
        if 0 < stft_frames < frames.shape[2]:
            start = int(torch.randint(0, frames.shape[2] - stft_frames + 1, (1,), generator=generator))
            frames = frames[:, :, start:start + stft_frames]
        return self.spectrum(waveform), self.stft(frames)

    @staticmethod
    def joint(spectrum: Tensor, stft: Tensor) -> Tensor:
        """The clip embedding: both branch embeddings at unit length, side by side, then unit length."""
        return F.normalize(torch.cat([F.normalize(spectrum, dim=1), F.normalize(stft, dim=1)], dim=1), dim=1)

    def embed(self, waveform: Tensor) -> Tensor:
        return self.joint(*self(waveform))
