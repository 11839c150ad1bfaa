"""Reading the segment cache for training and scoring: clip-level splits and block-shuffled streaming.

HDF5 reads are fast for contiguous rows and slow for scattered ones, so training batches are drawn as
random *blocks* of consecutive segments (several blocks mixed and shuffled per draw). Memory is bounded
by `blocks_per_draw x block_segments` segments, whatever the size of the shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from asd.cache.shard import Shard


def split_train_validation(clips: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a share of the normal training clips, by clip, stratified by section x domain.

    Every stratum with at least two clips gives at least one clip to validation (so the ten target clips
    of a DCASE section are represented) and keeps at least one for training. Returns sorted clip indices
    (train, validation). `fraction == 0` holds out nothing.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for _, group in clips.groupby(["section", "domain"], sort=True):
        index = group.index.to_numpy()
        n_val = 0 if fraction <= 0 or len(index) < 2 else min(len(index) - 1,
                                                                 max(1, round(fraction * len(index))))
        chosen = rng.permutation(index)
        val.extend(chosen[:n_val])
        train.extend(chosen[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def segment_rows_of(shard: Shard, clip_indices: np.ndarray) -> np.ndarray:
    """Sorted segment rows of the given clips."""
    clips = shard.clips
    firsts = clips["first_segment"].to_numpy()[clip_indices]
    counts = clips["n_segments"].to_numpy()[clip_indices]
    if len(firsts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([np.arange(f, f + n) for f, n in zip(firsts, counts, strict=True)]))


def read_rows(shard: Shard, rows: np.ndarray, what: str = "logmel") -> np.ndarray:
    """Read sorted segment rows with one contiguous HDF5 read per run of consecutive rows, each row checked
    against its stored checksum (`Shard.read`: DamagedFile naming the shard when one does not match)."""
    if len(rows) == 0:
        dtype, shape = shard.row_layout(what)
        return np.zeros((0, *shape), dtype=dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = [shard.read(what, slice(int(run[0]), int(run[-1]) + 1)) for run in np.split(rows, breaks)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class StreamConfig:
    """How training batches are drawn from a shard."""

    block_segments: int = 32  # consecutive segments read at once (one HDF5 chunk-friendly read)
    blocks_per_draw: int = 16  # blocks mixed together before shuffling (from different clips)


def stream_segments(shard: Shard, rows: np.ndarray, rng: np.random.Generator,
                    config: StreamConfig = StreamConfig()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch over `rows` in block-shuffled order: yields `(logmels, rows)` draws of up to
    `block_segments * blocks_per_draw` segments, shuffled within the draw."""
    rows = np.sort(rows)
    blocks = [rows[i:i + config.block_segments] for i in range(0, len(rows), config.block_segments)]
    order = rng.permutation(len(blocks))
    for start in range(0, len(order), config.blocks_per_draw):
        chosen = np.sort(np.concatenate([blocks[i] for i in order[start:start + config.blocks_per_draw]]))
        mels = read_rows(shard, chosen)
        perm = rng.permutation(len(chosen))
        yield mels[perm], chosen[perm]


def iterate_in_order(shard: Shard, rows: np.ndarray, batch_segments: int = 512
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All `rows` in file order, in batches: for scoring (deterministic, bounded memory)."""
    rows = np.sort(rows)
    for start in range(0, len(rows), batch_segments):
        chosen = rows[start:start + batch_segments]
        yield read_rows(shard, chosen), chosen


def rows_nbytes(shard: Shard, n_rows: int, dtype: str = "float32") -> int:
    """Bytes that `n_rows` log-mel blocks of `shard` take in memory as `dtype`."""
    _, (n_mels, n_frames) = shard.row_layout("logmel")
    return int(n_rows) * n_mels * n_frames * np.dtype(dtype).itemsize


def load_frames(shard: Shard, rows: np.ndarray, dtype: str = "float32", batch_segments: int = 512) -> np.ndarray:
    """The log-mel blocks of sorted `rows`, read once, as one frame-major array `[n_rows, n_frames, n_mels]`.

    Frame-major means the `context` consecutive frames of a feature vector are contiguous in memory, so
    the vectors can be strided views of this array instead of copies. Read in batches into the final
    array: the peak is the array plus one batch.
    """
    rows = np.sort(rows)
    _, (n_mels, n_frames) = shard.row_layout("logmel")
    out = np.empty((len(rows), n_frames, n_mels), dtype=dtype)
    for start in range(0, len(rows), batch_segments):
        chosen = rows[start:start + batch_segments]
        out[start:start + len(chosen)] = read_rows(shard, chosen).transpose(0, 2, 1)
    return out
