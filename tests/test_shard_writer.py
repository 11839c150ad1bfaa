"""ShardWriter's chunk paths: rows handed in batches of every alignment read back exactly, in order."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from asd.cache.features import FeatureConfig
from asd.cache.heap import keep_freed_memory
from asd.cache.shard import Shard
from asd.cache.writer import SegmentBatch, ShardWriter, _Digest, row_checksums

CONFIG = FeatureConfig(segment_seconds=0.25, hop_seconds=0.25, n_mels=16)  # small rows, several per chunk


def _clip(rng: np.random.Generator, n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    waves = rng.integers(-32768, 32767, (n_segments, CONFIG.segment_samples), dtype=np.int16)
    mels = rng.standard_normal((n_segments, CONFIG.n_mels, CONFIG.n_frames)).astype(np.float32)
    return waves, mels, np.arange(n_segments, dtype=np.int64) * CONFIG.hop_samples


def _row(i: int) -> dict:
    return {"rel_path": f"m/train/c{i}.wav", "file_name": f"c{i}.wav", "machine": "m", "section": "00",
            "domain": "source", "split": "train", "label": "normal", "attributes": "", "n_samples": 0,
            "original_sample_rate": 16000, "original_channels": 1, "notes": ""}


@pytest.mark.parametrize("expected", [0, 10_000], ids=["grown", "pre-sized-too-large"])
def test_batches_of_every_alignment_read_back_in_order(tmp_path: Path, expected: int) -> None:
    rng = np.random.default_rng(0)
    # clips of 1..40 segments, handed in per-clip lists and as SegmentBatches, so batches start and end
    # mid-chunk, exactly on a chunk boundary, and span several whole chunks
    clips = [_clip(rng, n) for n in (1, 3, 40, 7, 16, 1, 33, 2, 64, 5)]
    final = tmp_path / "m" / "train.h5"
    with ShardWriter(final, CONFIG, {"machine": "m"}, expected_segments=expected,
                     expected_clips=expected) as writer:
        chunk_rows = {name: block.chunk_rows for name, block in writer.blocks.items()}
        writer.add_clips([_row(0), _row(1)], clips[0:2])
        writer.add_clips([_row(2), _row(3), _row(4)], SegmentBatch.from_features(clips[2:5]))
        writer.add_clips([_row(5)], clips[5:6])
        writer.add_clips([_row(i) for i in range(6, 10)], SegmentBatch.from_features(clips[6:10]))
        writer.commit()
    assert min(chunk_rows.values()) > 1  # the test exercises partial chunks
    shard = Shard(final)
    total = sum(len(c[0]) for c in clips)
    assert shard.attrs["n_segments"] == total and len(shard.clips) == 10
    assert np.array_equal(shard.waveform(slice(None)), np.concatenate([c[0] for c in clips]))
    assert np.array_equal(shard.logmel(slice(None)), np.concatenate([c[1] for c in clips]))
    assert shard.clips["n_segments"].tolist() == [len(c[0]) for c in clips]
    with h5py.File(final) as file:
        assert file["waveform"].shape[0] == total and file["logmel"].shape[0] == total


def test_batch_carries_each_rows_checksum_and_digest_ignores_the_split() -> None:
    rng = np.random.default_rng(1)
    clips = [_clip(rng, n) for n in (3, 5)]
    batch = SegmentBatch.from_features(clips)
    assert batch.counts.tolist() == [3, 5] and batch.first_frames.tolist() == [-1] * 8
    assert np.array_equal(batch.wave_sums, row_checksums(batch.waves))
    whole, split = _Digest(), _Digest()
    whole.add(batch.logmels)
    split.add_sums(batch.logmel_sums[:2])
    split.add(batch.logmels[2:])
    assert whole.value == split.value and whole.rows == split.rows == 8
    swapped = _Digest()
    swapped.add(batch.logmels[[1, 0, 2, 3, 4, 5, 6, 7]])
    assert swapped.value != whole.value  # order matters


def test_mismatched_clip_rows_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with ShardWriter(tmp_path / "m" / "train.h5", CONFIG, {"machine": "m"}) as writer, \
            pytest.raises(Exception, match="2 clip rows for 1 clips"):
        writer.add_clips([_row(0), _row(1)], [_clip(rng, 2)])


def test_keep_freed_memory_takes_on_glibc() -> None:
    import platform

    took = keep_freed_memory()
    assert isinstance(took, bool)
    if platform.libc_ver()[0] == "glibc":
        assert took
