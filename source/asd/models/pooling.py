"""Clip-level spectral features: a clip's log-mel frames, pooled over time per mel band.

Global weighted ranking pooling (GWRP) sorts each mel band's values over time in descending order and
averages them with weights ``r**i`` (i = rank): ``r = 0`` keeps the maximum, ``r = 1`` gives the mean,
values in between weight the loudest moments most. Which ``r`` separates faults best differs between
machine types (a bearing's fault shows in its peaks, a steady fan's in its average level).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from asd.data import iterate_in_order
from asd.shard import Shard


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


def _frames_of_clip(mels: np.ndarray, starts: np.ndarray, hop_length: int) -> np.ndarray:
    """Join a clip's segment log-mels ``[n_seg, n_mels, n_frames]`` into ``[n_mels, T]``, keeping each
    frame once: overlapping segments (hop shorter than a segment, or the end-aligned last segment) would
    otherwise count the same moment twice. Frame ``j`` of a segment starting at sample ``s`` is taken as
    frame ``round(s / hop_length) + j`` of the clip."""
    n_frames = mels.shape[2]
    first = np.rint(np.asarray(starts) / hop_length).astype(np.int64)
    index = (first[:, None] + np.arange(n_frames)[None, :]).ravel()
    flat = np.transpose(mels, (1, 0, 2)).reshape(mels.shape[1], -1)  # [n_mels, n_seg * n_frames]
    _, keep = np.unique(index, return_index=True)
    return flat[:, np.sort(keep)]


def iterate_row_clip_frames(shard: Shard, rows: np.ndarray,
                            batch_segments: int = 512) -> Iterator[tuple[int, np.ndarray]]:
    """``(clip index, [n_mels, T] frames)`` for every clip of the given sorted segment rows (which must hold
    whole clips), in file order; memory bounded by one batch of segments plus one clip."""
    clip_of_row = shard.segments["clip_index"].to_numpy()
    start_of_row = shard.segments["start_sample"].to_numpy()
    hop = shard.feature_config.hop_length
    pending_clip, pending_mels, pending_rows = None, [], []
    for mels, chosen in iterate_in_order(shard, rows, batch_segments):
        clips = clip_of_row[chosen]
        for clip in np.unique(clips):  # file order: clip indices increase with rows
            mask = clips == clip
            if pending_clip is not None and clip != pending_clip:
                yield int(pending_clip), _frames_of_clip(np.concatenate(pending_mels),
                                                         start_of_row[np.concatenate(pending_rows)], hop)
                pending_mels, pending_rows = [], []
            pending_clip = clip
            pending_mels.append(mels[mask])
            pending_rows.append(chosen[mask])
    if pending_clip is not None:
        yield int(pending_clip), _frames_of_clip(np.concatenate(pending_mels),
                                                 start_of_row[np.concatenate(pending_rows)], hop)


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
