"""Clip-level spectral features: a clip's log-mel frames, pooled over time per mel band.

Global weighted ranking pooling (GWRP) sorts each mel band's values over time in descending order and
averages them with weights ``r**i`` (i = rank): ``r = 0`` keeps the maximum, ``r = 1`` gives the mean,
values in between weight the loudest moments most. Which ``r`` separates faults best differs between
machine types (a bearing's fault shows in its peaks, a steady fan's in its average level).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from asd.cache.reading import iterate_in_order
from asd.cache.shard import Shard


def gwrp_weights(n_frames: int, r: float) -> np.ndarray:
    """Normalised weights ``r**i / sum(r**i)`` for ranks ``i = 0 .. n_frames-1`` (``0**0 = 1``)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"a GWRP r must lie in [0, 1], got {r}")
    weights = np.power(float(r), np.arange(n_frames, dtype=np.float64))
    return weights / weights.sum()


def gwrp_pool(frames: np.ndarray, rs: tuple[float, ...]) -> np.ndarray:
    """Pool ``[n_mels, n_frames]`` over time once per ``r``: returns ``[len(rs), n_mels]`` (float64)."""
    ranked = -np.sort(-np.asarray(frames, dtype=np.float64), axis=1)  # descending along time
    weights = np.stack([gwrp_weights(ranked.shape[1], r) for r in rs])  # [R, T]
    return weights @ ranked.T


def _frames_of_clip(mels: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Join a clip's segment log-mels ``[n_seg, n_mels, n_frames]`` into ``[n_mels, T]``, keeping each
    frame once: overlapping segments (hop shorter than a segment, or the end-aligned last segment) would
    otherwise count the same moment twice. Frame ``j`` of a segment whose first frame is ``first`` is
    frame ``first + j`` of the clip."""
    n_frames = mels.shape[2]
    index = (first[:, None] + np.arange(n_frames)[None, :]).ravel()
    flat = np.transpose(mels, (1, 0, 2)).reshape(mels.shape[1], -1)  # [n_mels, n_seg * n_frames]
    _, keep = np.unique(index, return_index=True)
    return flat[:, np.sort(keep)]


def _first_frames(shard: Shard) -> np.ndarray:
    """Each segment row's first frame in its clip's log-mel: the stored ``first_frame``, or, where a shard
    does not know it (-1), the frame nearest to the segment's start."""
    segments = shard.segments
    estimate = np.rint(segments["start_sample"].to_numpy() / shard.feature_config.hop_length).astype(np.int64)
    if "first_frame" not in segments:
        return estimate
    stored = segments["first_frame"].to_numpy().astype(np.int64)
    return np.where(stored >= 0, stored, estimate)


def iterate_row_clip_frames(shard: Shard, rows: np.ndarray,
                            batch_segments: int = 512) -> Iterator[tuple[int, np.ndarray]]:
    """``(clip index, [n_mels, T] frames)`` for every clip of the given sorted segment rows (which must hold
    whole clips), in file order; memory bounded by one batch of segments plus one clip."""
    clip_of_row = shard.segments["clip_index"].to_numpy()
    first_of_row = _first_frames(shard)
    pending_clip, pending_mels, pending_rows = None, [], []
    for mels, chosen in iterate_in_order(shard, rows, batch_segments):
        clips = clip_of_row[chosen]
        for clip in np.unique(clips):  # file order: clip indices increase with rows
            mask = clips == clip
            if pending_clip is not None and clip != pending_clip:
                yield int(pending_clip), _frames_of_clip(np.concatenate(pending_mels),
                                                         first_of_row[np.concatenate(pending_rows)])
                pending_mels, pending_rows = [], []
            pending_clip = clip
            pending_mels.append(mels[mask])
            pending_rows.append(chosen[mask])
    if pending_clip is not None:
        yield int(pending_clip), _frames_of_clip(np.concatenate(pending_mels),
                                                 first_of_row[np.concatenate(pending_rows)])


def pooled_features(shard: Shard, rows: np.ndarray, rs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """GWRP features of the clips whose (whole) segment rows are given: ``(clip indices [n],
    features [n, len(rs), n_mels])``."""
    clips, features = [], []
    for clip, frames in iterate_row_clip_frames(shard, np.sort(rows)):
        clips.append(clip)
        features.append(gwrp_pool(frames, rs))
    n_mels = shard.feature_config.n_mels
    if not clips:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(rs), n_mels))
    return np.asarray(clips, dtype=np.int64), np.stack(features)
