"""A second clip-level feature: the short-time log power spectrum of the cached waveform, pooled over time.

The log-mel of the cache has 64 ms frames 32 ms apart and mel bands about 100 Hz wide at 2 kHz, wider
above; a click of a few milliseconds (a valve closing, a slide stopping) is averaged into those frames and
bands. Here the clip's whole int16 waveform (rebuilt from its cached segments) goes through a short STFT
(the cache's own, :func:`asd.cache.melspec.stft`: ``n_fft`` samples with a Hann window, hop
``n_fft // 4``; 32 ms frames 8 ms apart and 31 Hz bins at 16 kHz with the default 512), and each linear
frequency bin is pooled over time by GWRP (:mod:`asd.models.pooling`); ``r = 0``, its maximum, keeps the
click. Measured in docs/quality.md.
"""

from __future__ import annotations

import numpy as np

from asd.cache.melspec import stft
from asd.cache.shard import Shard
from asd.models.clip_crops import load_clip_waveforms
from asd.models.pooling import gwrp_pool

POWER_FLOOR = 1e-10  # digital silence reads -100 dB, not -inf
BATCH_CLIPS = 32  # clips read from the cache at once (10 MB of int16 for 10 s clips)


def pooled_spectra(shard: Shard, clip_indices: np.ndarray, n_fft: int, rs: tuple[float, ...]) -> np.ndarray:
    """GWRP features of each clip's short-time log power spectrum (dB):
    ``[len(clip_indices), len(rs), n_fft // 2 + 1]``, in the order of ``clip_indices``. Every clip is
    transformed whole, at its own length (one shorter than a frame is repeated to fill it, as
    :func:`~asd.models.clip_crops.load_clip_waveforms` does); memory is bounded by a batch of clips."""
    clip_indices = np.asarray(clip_indices, dtype=np.int64)
    lengths = np.maximum(shard.clips["n_samples"].to_numpy()[clip_indices], n_fft)
    out = np.empty((len(clip_indices), len(rs), n_fft // 2 + 1))
    maximum_only = all(r == 0.0 for r in rs)
    for length in np.unique(lengths):
        same = np.flatnonzero(lengths == length)
        for first in range(0, len(same), BATCH_CLIPS):
            positions = same[first:first + BATCH_CLIPS]
            waves = load_clip_waveforms(shard, clip_indices[positions], int(length)).astype(np.float32) / 32768
            for position, wave in zip(positions, waves, strict=True):
                # one clip at a time: its spectrum (5 MB for 10 s) stays in the CPU cache, 1.8x faster
                spectrum = stft(wave[None], n_fft, n_fft // 4)[0]  # [frames, n_fft // 2 + 1]
                power = np.square(spectrum.real)
                power += np.square(spectrum.imag)
                if maximum_only:  # r = 0 is the loudest frame, whatever the scale: no sort, one log per bin
                    out[position] = 10 * np.log10(power.max(axis=0).astype(np.float64) + POWER_FLOOR)
                else:
                    out[position] = gwrp_pool(10 * np.log10(power.T + POWER_FLOOR), rs)
    return out
