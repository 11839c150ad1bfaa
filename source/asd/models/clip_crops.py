"""Whole-clip log-mels for the embedding model: read once from the segment cache, cropped at random for
training, cut into equal windows for scoring.

The cache stores one log-mel block per 1-second segment, cut from the log-mel of the whole clip
(:mod:`asd.cache.features`), so joining a clip's blocks by frame index gives back the clip's own log-mel
(:func:`asd.models.pooling.iterate_row_clip_frames`). Clips are kept in memory as float16: a 10 s clip
with 128 mel bands is 80 KB, so 1,000 clips take 80 MB.
"""

from __future__ import annotations

import numpy as np

from asd.cache.reading import segment_rows_of
from asd.cache.shard import Shard
from asd.models.pooling import iterate_row_clip_frames


def load_clip_frames(shard: Shard, clip_indices: np.ndarray, dtype: type = np.float16) -> list[np.ndarray]:
    """The whole-clip log-mel ``[n_mels, T]`` of each clip, in the order of `clip_indices`."""
    clip_indices = np.asarray(clip_indices, dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    for clip, frames in iterate_row_clip_frames(shard, segment_rows_of(shard, np.sort(clip_indices))):
        found[clip] = frames.astype(dtype)
    return [found[int(c)] for c in clip_indices]


def load_clip_waveforms(shard: Shard, clip_indices: np.ndarray, length: int) -> np.ndarray:
    """The int16 waveform of each clip rebuilt from its cached segments (``start_sample`` places each, the
    end-aligned tail included), wrapped or cut to ``length`` samples: ``[len(clip_indices), length]``."""
    clip_indices = np.asarray(clip_indices, dtype=np.int64)
    out = np.empty((len(clip_indices), length), dtype=np.int16)
    position = {int(c): i for i, c in enumerate(clip_indices)}
    rows = segment_rows_of(shard, np.sort(clip_indices))
    clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
    start_of_row = shard.segments["start_sample"].to_numpy()[rows]
    n_samples = shard.clips["n_samples"].to_numpy()

    def finish(clip: int, whole: np.ndarray) -> None:
        if len(whole) == length:
            out[position[clip]] = whole
        else:
            out[position[clip]] = np.take(whole, np.arange(length) % len(whole))  # wrapped, never zero-padded

    current, whole = -1, np.zeros(0, dtype=np.int16)
    for first in range(0, len(rows), 512):  # bounded memory: 512 segments at a time; rows hold whole clips
        chunk = slice(first, first + 512)
        for wave, clip, start in zip(shard.waveform(rows[chunk]), clip_of_row[chunk], start_of_row[chunk],
                                     strict=True):
            if clip != current:
                if current >= 0:
                    finish(current, whole)
                current, whole = int(clip), np.zeros(int(n_samples[clip]), dtype=np.int16)
            stop = min(int(start) + len(wave), len(whole))
            whole[int(start):stop] = wave[:stop - int(start)]
    if current >= 0:
        finish(current, whole)
    return out


def fit_length(frames: np.ndarray, length: int, start: int = 0) -> np.ndarray:
    """``length`` frames of ``[n_mels, T]`` from ``start``; a clip shorter than that is repeated (wrapped)
    rather than zero-padded, because silence is never what a running machine sounds like."""
    n_frames = frames.shape[1]
    if n_frames >= length:
        return frames[:, start:start + length]
    return np.take(frames, np.arange(length) % n_frames, axis=1)


def random_crops(clips: list[np.ndarray], chosen: np.ndarray, length: int,
                 rng: np.random.Generator) -> np.ndarray:
    """One random crop of ``length`` frames from each chosen clip: ``[len(chosen), n_mels, length]`` float32."""
    out = np.empty((len(chosen), clips[0].shape[0], length), dtype=np.float32)
    for i, clip in enumerate(chosen):
        frames = clips[clip]
        start = int(rng.integers(0, max(frames.shape[1] - length, 0) + 1))
        out[i] = fit_length(frames, length, start)
    return out


def windows(frames: np.ndarray, length: int) -> np.ndarray:
    """A clip cut into windows for scoring: ``[n, n_mels, length]``. ``length = 0`` gives the whole clip
    as one window; otherwise windows start every ``length`` frames and the last one is aligned to the
    clip's end, so every frame is seen and none is invented."""
    n_frames = frames.shape[1]
    if length <= 0:
        return frames[None].astype(np.float32)
    if n_frames <= length:
        return fit_length(frames, length)[None].astype(np.float32)
    starts = list(range(0, n_frames - length + 1, length))
    if starts[-1] + length < n_frames:
        starts.append(n_frames - length)
    return np.stack([frames[:, s:s + length] for s in starts]).astype(np.float32)
