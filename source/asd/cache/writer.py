"""Writing a shard (SPEC §4): `ShardWriter` writes segments batch by batch to a temporary file, digests every
row's checksum as it goes, reads the closed file back before the atomic rename, and fails the shard cleanly (nothing
committed) when any write fails, a full disk included. The layout itself lives in :mod:`asd.cache.shard`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from asd.cache.features import SCHEMA_VERSION, FeatureConfig
from asd.cache.integrity import (
    CHECKSUM_GROUP,
    DIGESTS_ATTR,
    HEADER_DIGEST_ATTR,
    Damage,
    Digest,
    check_header,
    header_digest,
    iter_blocks,
    row_checksums,
    write_stamp,
)
from asd.cache.shard import (
    CLIP_COLUMNS,
    SEGMENT_COLUMNS,
    STR,
    TABLE_CHUNK_MIN_BYTES,
    TABLE_CHUNK_ROWS,
    _rows_per_chunk,
    partial_path,
    segment_name,
)
from asd.errors import ShardWriteFailed
from asd.version import __version__

_Digest = Digest  # the name earlier versions (and their tests) used


@dataclass
class SegmentBatch:
    """Several clips' segments in one block of rows, with each row's checksum: what a data_prep worker
    hands the writer, so the concatenation and the checksums run in the workers, in parallel, and the
    writer can write whole chunks straight from these arrays."""

    waves: np.ndarray  # int16 [rows, segment_samples]
    logmels: np.ndarray  # float32 [rows, n_mels, n_frames]
    starts: np.ndarray  # int64 [rows]
    first_frames: np.ndarray  # int64 [rows] (-1: unknown)
    counts: np.ndarray  # int64 [clips]: rows per clip, in order
    wave_sums: np.ndarray  # uint64 [rows]: row_checksums(waves)
    logmel_sums: np.ndarray  # uint64 [rows]

    @classmethod
    def from_features(cls, segments: list) -> SegmentBatch:
        """From per-clip `asd.cache.features.SegmentFeatures` (or `(waveforms, logmels, start samples)`)."""
        parts = [(f[0], f[1], f[2], np.full(len(f[0]), -1, np.int64)) if isinstance(f, tuple)
                 else (f.waves, f.logmels, f.starts, f.first_frames) for f in segments]
        waves = np.concatenate([np.asarray(p[0], dtype=np.int16) for p in parts])
        logmels = np.concatenate([np.asarray(p[1], dtype=np.float32) for p in parts])
        return cls(waves, logmels, np.concatenate([np.asarray(p[2], np.int64) for p in parts]),
                   np.concatenate([np.asarray(p[3], np.int64) for p in parts]),
                   np.array([len(p[0]) for p in parts], dtype=np.int64),
                   row_checksums(waves), row_checksums(logmels))


class _BlockWriter:
    """Writes the rows of one big dataset chunk by chunk (`write_direct_chunk`: no chunk cache, no
    partial-chunk rewrites), straight from the arrays handed in wherever whole chunks line up; only rows
    that do not fill a chunk are copied, into a one-chunk `stage`. The digest takes every row as handed in."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.chunk_rows = dataset.chunks[0]
        self.stage = np.zeros((self.chunk_rows, *dataset.shape[1:]), dataset.dtype)
        self.staged = 0  # rows waiting in the stage
        self.written = 0  # rows on disk: whole chunks until `finish`
        self.digest = Digest()
        self._origin = (0,) * (dataset.ndim - 1)

    def add(self, values: np.ndarray, sums: np.ndarray | None = None) -> None:
        values = np.ascontiguousarray(values, dtype=self.dataset.dtype)
        self.digest.add_sums(row_checksums(values) if sums is None else sums)
        done, step = 0, self.chunk_rows
        while done < len(values):
            if self.staged or len(values) - done < step:
                take = min(len(values) - done, step - self.staged)
                self.stage[self.staged:self.staged + take] = values[done:done + take]
                self.staged += take
                done += take
                if self.staged == step:
                    self._write_chunks(self.stage)
                    self.staged = 0
            else:
                whole = (len(values) - done) // step * step
                self._write_chunks(values[done:done + whole])
                done += whole

    def _write_chunks(self, rows: np.ndarray) -> None:
        """Write whole chunks (len(rows) a multiple of chunk_rows) after the rows already written."""
        end = self.written + len(rows)
        if end > self.dataset.shape[0]:  # grows geometrically when the pre-sizing fell short
            self.dataset.resize(max(end, self.dataset.shape[0] * 5 // 4), axis=0)
        write, step = self.dataset.id.write_direct_chunk, self.chunk_rows
        for start in range(0, len(rows), step):
            write((self.written + start, *self._origin), rows[start:start + step])
        self.written = end

    def finish(self) -> None:
        if self.staged:  # the last, partial chunk: zero-filled past the end, then cut off by the resize
            self.stage[self.staged:] = 0
            short = self.chunk_rows - self.staged
            self._write_chunks(self.stage)
            self.written -= short
            self.staged = 0
        if self.dataset.shape[0] != self.written:
            self.dataset.resize(self.written, axis=0)


class _TableWriter:
    """Buffers the batches of one 1-D table column and writes them in blocks at a cursor, with a digest."""

    def __init__(self, dataset: h5py.Dataset, block_rows: int = 8192) -> None:
        self.dataset = dataset
        self.block_rows = block_rows
        self.buffer: list = []  # the batches handed in
        self.buffered = 0  # rows in them
        self.written = 0
        self.digest = Digest()

    def add(self, values) -> None:
        self.buffer.append(values)
        self.buffered += len(values)
        if self.buffered >= self.block_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        if self.dataset.dtype == STR:
            values = np.asarray([v for batch in self.buffer for v in batch], dtype=object)
        else:
            values = np.concatenate([np.asarray(batch, dtype=self.dataset.dtype) for batch in self.buffer])
        self.digest.add(values)
        end = self.written + len(values)
        if end > self.dataset.shape[0]:
            self.dataset.resize(end, axis=0)
        self.dataset[self.written:end] = values
        self.written = end
        self.buffer, self.buffered = [], 0

    def finish(self) -> None:
        self.flush()
        if self.dataset.shape[0] != self.written:
            self.dataset.resize(self.written, axis=0)


class _GuardedFile:
    """The file object HDF5 writes through (h5py's "fileobj" driver): positional reads and writes on one
    descriptor, where a failed write is recorded instead of reported to HDF5.

    Why: after a write fails inside HDF5 (a full disk), its close fails as well, the library is left in
    a broken state, and a later file or the process exit crashes it (a segmentation fault). Recording
    the first error here keeps HDF5 consistent; the writer checks `error` after every batch and before
    committing, and the read-back check would catch a lost byte anyway."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as err:
                self.error = err
        self.pos += len(view)
        return len(view)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self.fd, len(view), self.pos)
        view[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, size, self.pos)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: os.fstat(self.fd).st_size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as err:
                self.error = err
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShardWriter:
    """Writes segments batch by batch to a temporary file; `commit()` verifies, seals and renames it.

    Datasets are pre-sized from `expected_segments` / `expected_clips` (grown or shrunk as needed); the
    big ones are written a whole chunk at a time, straight from the batches' arrays. Every row's checksum
    is kept while writing; `commit()` reads the whole file back and compares before the rename, so a shard
    whose bytes did not all reach the file (a full disk, an I/O error h5py only reports in a destructor)
    is never committed: it raises `ShardWriteFailed` and the temporary file is removed. Use as a context
    manager: leaving the block with an exception deletes the temporary file.
    """

    def __init__(self, final_path: Path, config: FeatureConfig, meta: dict[str, str],
                 expected_segments: int = 0, expected_clips: int = 0) -> None:
        self.final_path = Path(final_path)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = partial_path(self.final_path)
        self.config = config
        self.n_clips = 0
        self.n_segments = 0
        self.file = None
        self.guard: _GuardedFile | None = None
        try:
            self._create(expected_segments, expected_clips, meta)
        except (OSError, RuntimeError, ValueError) as err:
            self.abort()
            raise ShardWriteFailed(self.final_path, f"{_reason(err)}; nothing was committed") from err

    def _create(self, expected_segments: int, expected_clips: int, meta: dict[str, str]) -> None:
        config = self.config
        self.guard = _GuardedFile(self.tmp_path)
        self.file = h5py.File(self.guard, "w", libver=("v110", "v110"))
        length, mels, frames = config.segment_samples, config.n_mels, config.n_frames
        waveform = self.file.create_dataset(
            "waveform", shape=(expected_segments, length), maxshape=(None, length), dtype=np.int16,
            chunks=(_rows_per_chunk(length * 2), length))
        logmel = self.file.create_dataset(
            "logmel", shape=(expected_segments, mels, frames), maxshape=(None, mels, frames),
            dtype=np.float32, chunks=(_rows_per_chunk(mels * frames * 4), mels, frames))
        self.blocks = {"waveform": _BlockWriter(waveform), "logmel": _BlockWriter(logmel)}
        self.tables: dict[str, _TableWriter] = {}
        sums = {name: np.uint64 for name in self.blocks}  # each stored row's checksum (asd.cache.integrity)
        for group, columns, expected in (("clips", CLIP_COLUMNS, expected_clips),
                                         ("segments", SEGMENT_COLUMNS, expected_segments),
                                         (CHECKSUM_GROUP, sums, expected_segments)):
            for name, dtype in columns.items():
                dataset = self.file.create_dataset(
                    f"{group}/{name}", shape=(expected,), maxshape=(None,), dtype=dtype,
                    chunks=(max(TABLE_CHUNK_ROWS, TABLE_CHUNK_MIN_BYTES // np.dtype(dtype).itemsize),))
                self.tables[f"{group}/{name}"] = _TableWriter(dataset)
        attrs = self.file.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        for key, value in config.to_dict().items():
            attrs[key] = "none" if value is None else value
        attrs["segment_samples"] = config.segment_samples
        attrs["hop_samples"] = config.hop_samples
        attrs["n_frames"] = config.n_frames
        attrs["feature_config"] = json.dumps(config.to_dict(), sort_keys=True)
        attrs["fingerprint"] = config.fingerprint()
        attrs["package_version"] = __version__
        attrs["complete"] = False
        for key, value in meta.items():
            attrs[key] = value

    def add_clips(self, clips: list[dict], segments: list | SegmentBatch) -> None:
        """Append a batch of clips: their clip-table rows (without the CSR fields) and their segments, as
        a `SegmentBatch` or, per clip, its `asd.cache.features.SegmentFeatures` (or `(waveforms, logmels,
        start samples)`)."""
        if not clips:
            return
        try:
            self._add(clips, segments)
        except (OSError, RuntimeError, ValueError) as err:
            raise ShardWriteFailed(self.final_path, f"{_reason(err)}; nothing was committed") from err
        self._check_guard()

    def _check_guard(self) -> None:
        if self.guard is not None and self.guard.error is not None:
            raise ShardWriteFailed(self.final_path, f"{_reason(self.guard.error)}; nothing was committed")

    def _add(self, clips: list[dict], segments: list | SegmentBatch) -> None:
        """One call per table column and per big dataset for the whole batch, not per clip."""
        batch = segments if isinstance(segments, SegmentBatch) else SegmentBatch.from_features(segments)
        counts = batch.counts
        if len(counts) != len(clips):
            raise ValueError(f"{len(clips)} clip rows for {len(counts)} clips' segments")
        firsts = self.n_segments + np.cumsum(counts) - counts
        rows = [{**clip, "first_segment": int(f), "n_segments": int(n)}
                for clip, f, n in zip(clips, firsts, counts, strict=True)]
        for name in CLIP_COLUMNS:
            self.tables[f"clips/{name}"].add([row[name] for row in rows])
        index = np.repeat(np.arange(self.n_clips, self.n_clips + len(clips)), counts)
        segment_id = np.arange(int(counts.sum())) - np.repeat(firsts - self.n_segments, counts)
        self.tables["segments/clip_index"].add(index)
        self.tables["segments/segment_id"].add(segment_id)
        self.tables["segments/start_sample"].add(batch.starts)
        self.tables["segments/first_frame"].add(batch.first_frames)
        self.tables["segments/name"].add([segment_name(i, k, row["domain"], row["label"]) for i, row in
                                          enumerate(rows, self.n_clips) for k in range(row["n_segments"])])
        self.blocks["waveform"].add(batch.waves, batch.wave_sums)
        self.blocks["logmel"].add(batch.logmels, batch.logmel_sums)
        self.tables[f"{CHECKSUM_GROUP}/waveform"].add(batch.wave_sums)
        self.tables[f"{CHECKSUM_GROUP}/logmel"].add(batch.logmel_sums)
        self.n_clips += len(clips)
        self.n_segments += int(counts.sum())

    def commit(self) -> Path:
        """Write what is staged, mark complete, close, read everything back and compare it with what was
        handed in, fsync, and atomically rename to the final name. Raises `ShardWriteFailed` (and
        removes the temporary file) when any of it fails."""
        try:
            for writer in (*self.blocks.values(), *self.tables.values()):
                writer.finish()
            attrs = self.file.attrs
            attrs["n_clips"] = self.n_clips
            attrs["n_segments"] = self.n_segments
            attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["complete"] = True
            attrs[DIGESTS_ATTR] = json.dumps({name: w.digest.hex for name, w in self.tables.items()}, sort_keys=True)
            attrs[HEADER_DIGEST_ATTR] = header_digest(attrs)  # last: it covers the attributes above
            self.file.flush()
            self.file.close()
            if self.guard.error is not None:
                raise self.guard.error
            os.fsync(self.guard.fd)  # on disk before the rename makes it visible
            self.guard.close()
            self._verify()
            os.replace(self.tmp_path, self.final_path)
            write_stamp(self.final_path)  # read back in full just now: data_prep's next run may trust it
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            self.abort()
            raise ShardWriteFailed(self.final_path, f"{_reason(err)}; nothing was committed") from err
        return self.final_path

    def _verify(self) -> None:
        """Read the closed temporary file back and compare every dataset's digest and length."""
        expected = {name: (w.digest, w.written) for name, w in {**self.blocks, **self.tables}.items()}
        with h5py.File(self.tmp_path, "r") as file:
            if not file.attrs.get("complete") or int(file.attrs["n_segments"]) != self.n_segments:
                raise OSError("the shard's attributes did not read back as written")
            try:
                check_header(file.attrs)
            except Damage as err:
                raise OSError(f"the shard's attributes did not read back as written ({err})") from None
            for name, (digest, rows) in expected.items():
                dataset = file[name]
                if dataset.shape[0] != rows:
                    raise OSError(f"{name} holds {dataset.shape[0]} rows, {rows} were written")
                got = Digest()
                if name in self.blocks:  # the big ones: raw chunk bytes into a buffer, digested per block
                    for _, block in iter_blocks(dataset):
                        got.add(block)
                else:
                    step = max(dataset.chunks[0], TABLE_CHUNK_ROWS)
                    for start in range(0, rows, step):
                        got.add(dataset.asstr()[start:start + step] if dataset.dtype == STR
                                else dataset[start:start + step])
                if got.value != digest.value:
                    raise OSError(f"{name} did not read back as written (checksum mismatch)")

    def abort(self) -> None:
        """Close and delete the temporary file (HDF5 never saw a failed write, so its close succeeds)."""
        if self.file is not None and self.file.id.valid:
            with contextlib.suppress(Exception):
                self.file.close()
        if self.guard is not None:
            self.guard.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _reason(err: BaseException) -> str:
    """One line saying why a write failed; a full disk is named as such."""
    text = f"{err}"
    errno_value = getattr(err, "errno", None)
    if errno_value == errno.ENOSPC or "No space left" in text or "errno = 28" in text:
        return "no space left on the device"
    return text.splitlines()[0] if text else type(err).__name__
