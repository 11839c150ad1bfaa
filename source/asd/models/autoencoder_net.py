"""DCASE baseline autoencoder: frame stacking, the MLP autoencoder and its reconstruction errors.

The DCASE Task 2 reference system turns a log-mel spectrogram into overlapping vectors of ``context``
consecutive frames (128 mels x 5 frames = 640 dimensions), reconstructs them with a small MLP that has an
8-dimensional bottleneck, and scores by reconstruction error (mean squared error, or the Mahalanobis
distance of the per-dimension error; see :mod:`asd.models.mahalanobis`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


def frames_to_vectors(logmel: Tensor, context: int = 5) -> Tensor:
    """Stack ``context`` consecutive frames of each spectrogram into one flat vector.

    Args:
        logmel: ``[B, n_mels, T]`` log-mel spectrograms.
        context: number of consecutive frames per vector (DCASE baseline: 5).

    Returns:
        ``[B * (T - context + 1), n_mels * context]``. Rows are ordered batch-major, then by start frame:
        row ``b * (T - context + 1) + t`` holds frames ``t .. t + context - 1`` of item ``b``. Inside a row
        the layout is frame-major (as in the DCASE baseline): element ``j * n_mels + m`` is mel bin ``m``
        of frame ``t + j``.
    """
    if logmel.dim() != 3:
        raise ValueError(f"expected logmel of shape [B, n_mels, T], got {tuple(logmel.shape)}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    batch, n_mels, n_frames = logmel.shape
    if n_frames < context:
        raise ValueError(f"need at least context={context} frames, got T={n_frames}")
    windows = logmel.unfold(2, context, 1)  # [B, n_mels, T - context + 1, context]
    windows = windows.permute(0, 2, 3, 1)  # [B, n_windows, context, n_mels]: frame-major inside a row
    return windows.reshape(batch * (n_frames - context + 1), context * n_mels)


def strided_vectors(frames: Tensor, context: int = 5) -> Tensor:
    """All ``context``-frame vectors of frame-major spectrograms as a view, without copying.

    Args:
        frames: ``[B, T, n_mels]`` (frame-major: one frame's mel bins contiguous).
        context: frames per vector.

    Returns:
        ``[B, T - context + 1, context * n_mels]`` sharing memory with ``frames``; element
        ``[b, t, j * n_mels + m]`` is ``frames[b, t + j, m]``, the layout of :func:`frames_to_vectors`.
        Gathering a training batch from it copies only the batch.
    """
    if frames.dim() != 3:
        raise ValueError(f"expected frames of shape [B, T, n_mels], got {tuple(frames.shape)}")
    batch, n_frames, n_mels = frames.shape
    if not 1 <= context <= n_frames:
        raise ValueError(f"need 1 <= context <= T={n_frames}, got context={context}")
    frames = frames.contiguous()
    return frames.as_strided((batch, n_frames - context + 1, context * n_mels),
                             (n_frames * n_mels, n_mels, 1), frames.storage_offset())


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of :class:`DcaseAutoencoder` (defaults: the DCASE baseline)."""

    input_dim: int = 640
    hidden: int = 128
    bottleneck: int = 8
    n_hidden_layers: int = 4


def _dense(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())


class DcaseAutoencoder(nn.Module):
    """MLP autoencoder of the DCASE baseline.

    Default layout: 640 -> 128 -> 128 -> 128 -> 128 -> 8 -> 128 -> 128 -> 128 -> 128 -> 640. Every
    layer except the output is Linear + BatchNorm1d + ReLU (the bottleneck included, as in the baseline);
    the output layer is linear so it can reproduce any log-mel value.
    """

    def __init__(
        self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8, n_hidden_layers: int = 4
    ) -> None:
        super().__init__()
        if n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be >= 1, got {n_hidden_layers}")
        self.config = AutoencoderConfig(input_dim, hidden, bottleneck, n_hidden_layers)
        enc: list[nn.Module] = [_dense(input_dim, hidden)]
        enc += [_dense(hidden, hidden) for _ in range(n_hidden_layers - 1)]
        enc.append(_dense(hidden, bottleneck))
        dec: list[nn.Module] = [_dense(bottleneck, hidden)]
        dec += [_dense(hidden, hidden) for _ in range(n_hidden_layers - 1)]
        dec.append(nn.Linear(hidden, input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """``[N, input_dim]`` -> bottleneck codes ``[N, bottleneck]``."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, input_dim]`` -> reconstruction ``[N, input_dim]``."""
        return self.decoder(self.encoder(x))


def per_dim_error(x: Tensor, x_hat: Tensor, squared: bool = False) -> Tensor:
    """Per-dimension reconstruction error ``[N, D]``.

    By default the signed residual ``x - x_hat`` (what the DCASE 2023+ baseline feeds to its Mahalanobis
    scorer); with ``squared=True`` the element-wise squared error.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    diff = x - x_hat
    return diff * diff if squared else diff


def reconstruction_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error per vector: ``[N, D]`` x2 -> ``[N]``."""
    return per_dim_error(x, x_hat, squared=True).mean(dim=1)
