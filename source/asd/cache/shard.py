"""The HDF5 shard: one file per dataset x machine type x split, holding every 1-second segment (SPEC §4).

Layout of a shard:

    /            attributes: schema_version, every FeatureConfig field, fingerprint, feature_config (JSON),
                 dataset, machine, split, source_root, source_digest, package_version, created_utc,
                 n_clips, n_segments, complete, digests (of every table), header_digest
    /clips/*     the clip table, one 1-D dataset per column (CSR-style: first_segment, n_segments)
    /segments/*  the segment table: clip_index, segment_id, start_sample, name
    /checksums/* uint64 [n_segments]: the checksum of every waveform and every logmel row
    /waveform    int16   [n_segments, segment_samples]
    /logmel      float32 [n_segments, n_mels, n_frames]

A shard is written (by :mod:`asd.cache.writer`) under a temporary name and renamed when complete and
verified, so a file with the final name is always whole; every read checks what it reads against the
stored checksums (:mod:`asd.cache.integrity`), so a file damaged since is never read as valid. Readers
open the file lazily and reopen after a fork (safe in DataLoader workers).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from asd.cache.features import SCHEMA_VERSION, FeatureConfig
from asd.cache.integrity import (
    CHECKSUM_GROUP,
    GARBLED,
    Damage,
    Digest,
    check_dataset,
    check_header,
    check_layout,
    check_rows,
    check_tables,
    first_line,
    forget_stamp,
    plain_attrs,
    row_checksums,
    stored_digests,
)
from asd.errors import PREP_COMMAND, BadState, DamagedFile

if TYPE_CHECKING:
    import pandas as pd

STR = h5py.string_dtype("utf-8")  # variable length: DCASE names exceed any sensible fixed width

CLIP_COLUMNS: dict[str, object] = {
    "rel_path": STR, "file_name": STR, "machine": STR, "section": STR, "domain": STR, "split": STR,
    "label": STR, "attributes": STR, "n_samples": np.int64, "original_sample_rate": np.int32,
    "original_channels": np.int16, "first_segment": np.int64, "n_segments": np.int64, "notes": STR,
}
# first_frame: where the segment's log-mel frames start in its clip's whole-clip log-mel (-1: unknown)
SEGMENT_COLUMNS: dict[str, object] = {
    "clip_index": np.int64, "segment_id": np.int32, "start_sample": np.int64, "first_frame": np.int64,
    "name": STR,
}
TABLE_CHUNK_ROWS = 4096  # ~32 KiB per int64 chunk: inside SPEC §4's 10 KiB - 1 MiB band
TABLE_CHUNK_MIN_BYTES = 16 * 1024  # narrow columns (int16) get more rows, so no chunk falls below 10 KiB


class StaleShard(BadState, RuntimeError):
    """A shard built with other settings than the ones asked for, or not complete."""


def segment_name(clip_index: int, segment_id: int, domain: str, label: str) -> str:
    """The segment naming of SPEC §3."""
    return f"index={clip_index}__segment_id={segment_id}__domain={domain}__label={label}"


def _rows_per_chunk(row_bytes: int, target_bytes: int = 1024 * 1024) -> int:
    """Rows per chunk so that one chunk holds at most 1 MiB, the top of SPEC §4's 10 KiB - 1 MiB band:
    data_prep writes and verifies a chunk per call, and 1 MiB chunks made it 4-16% faster than 256 KiB
    ones; readers read whole clips and batches of segments, so larger chunks cost them nothing."""
    return max(1, min(1024, target_bytes // max(1, row_bytes)))


def partial_path(final_path: Path) -> Path:
    """Where a shard is written until complete: same folder (atomic rename), a name no reader accepts,
    unique to the writing process (concurrent runs never share one)."""
    return final_path.with_name(f".{final_path.name}.{os.getpid()}.partial")


def shard_layout(attrs: dict) -> dict[str, tuple[object, tuple[int, ...]]]:
    """Every dataset a shard with these (verified) attributes holds: {name: (dtype, shape)}."""
    n_clips, n_segments = int(attrs["n_clips"]), int(attrs["n_segments"])
    layout: dict[str, tuple[object, tuple[int, ...]]] = {
        "waveform": (np.int16, (n_segments, int(attrs["segment_samples"]))),
        "logmel": (np.float32, (n_segments, int(attrs["n_mels"]), int(attrs["n_frames"]))),
    }
    for group, columns, rows in (("clips", CLIP_COLUMNS, n_clips), ("segments", SEGMENT_COLUMNS, n_segments),
                                 (CHECKSUM_GROUP, {"waveform": np.uint64, "logmel": np.uint64}, n_segments)):
        layout.update({f"{group}/{name}": (dtype, (rows,)) for name, dtype in columns.items()})
    return layout


def verify_shard(path: Path, full: bool) -> None:
    """Raise `Damage` unless the shard at `path` is whole: its header, every dataset's type and shape, its
    tables against their digests (always; reads only the small tables), and every data row against its
    checksum (`full`: reads the whole file). For a shard of the current schema (checked before)."""
    try:
        with h5py.File(path, "r") as file:
            attrs = plain_attrs(file.attrs)
            check_header(attrs)
            check_layout(file, shard_layout(attrs))
            check_tables(file)
            if int(file["clips/n_segments"][()].sum()) != int(attrs["n_segments"]):
                raise Damage("its clips' segment counts do not add up to its segments")
            if full:
                check_rows(file)
    except GARBLED as err:
        raise Damage(first_line(err)) from None


def damaged(path: str | Path, reason: str) -> DamagedFile:
    """The one message for a damaged shard: which, why, and the command that rebuilds it. The shard's
    stamp goes, so that command verifies it in full (and rebuilds it) instead of trusting it."""
    forget_stamp(Path(path))
    return DamagedFile(f"shard {path} is damaged ({reason}); `{PREP_COMMAND}` rebuilds it "
                       "(same --raw-dir/--out-dir as before)")


class Shard:
    """Read access to a complete shard. Opens lazily, reopens after a fork, pickles without its handle.

    Everything read is verified against what the writer stored (`asd.cache.integrity`): the header on
    opening, each table against its digest when loaded, each data row against its checksum as it is read.
    A mismatch, like any file HDF5 cannot parse, raises `DamagedFile` naming the shard and the fix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._clips: pd.DataFrame | None = None
        self._segments: pd.DataFrame | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._digests: dict[str, str] = {}
        self._layout: dict[str, tuple[object, tuple[int, ...]]] = {}
        self._open: dict[str, h5py.Dataset] = {}  # datasets checked and open in this process's handle
        with self._reading("its header"):
            attrs = self.attrs
        self.close()  # checked and closed again: nothing stays open across a later fork
        if not attrs.get("complete", False):
            raise StaleShard(f"{self.path} is not a complete shard (interrupted write?); rerun data_prep")
        if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StaleShard(f"{self.path} has schema version {attrs.get('schema_version')}, this "
                             f"version reads {SCHEMA_VERSION}; rebuild it with data_prep --force")
        with self._reading("its header"):
            check_header(attrs)
            self._digests = stored_digests(attrs)
            self._layout = shard_layout(attrs)

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn a failed or mismatching read into `DamagedFile` (h5py says "garbled" with several types)."""
        try:
            yield
        except Damage as err:
            raise damaged(self.path, str(err)) from None
        except GARBLED as err:
            raise damaged(self.path, f"reading {what}: {first_line(err)}") from None

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._open = {}
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None, "_open": {}}

    def close(self) -> None:
        self._open = {}
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    @property
    def attrs(self) -> dict:
        return plain_attrs(self.file.attrs)

    @property
    def fingerprint(self) -> str:
        return str(self.file.attrs["fingerprint"])

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(**json.loads(self.file.attrs["feature_config"]))

    @property
    def machine(self) -> str:
        return str(self.file.attrs["machine"])

    def _dataset(self, name: str) -> h5py.Dataset:
        """A dataset of the shard, checked to have the type and shape its verified header implies before
        anything is read from it; opened once per file handle (reopening costs HDF5 its chunk index)."""
        file = self.file
        found = self._open.get(name)
        if found is None:
            if name not in self._layout:
                raise Damage(f"/{name} is not part of a shard")
            found = self._open[name] = check_dataset(file, name, *self._layout[name])
        return found

    def _column(self, name: str) -> np.ndarray:
        """One whole table column, checked against its digest."""
        with self._reading(f"/{name}"):
            column = self._dataset(name)
            values = column.asstr()[()] if column.dtype == STR else column[()]
            digest = Digest()
            digest.add(values)
            if digest.hex != self._digests.get(name):
                raise Damage(f"/{name} does not match its digest")
        return values

    def row_layout(self, what: str) -> tuple[np.dtype, tuple[int, ...]]:
        """The dtype and the shape of one row of "logmel" or "waveform", from the verified header."""
        dtype, shape = self._layout[what]
        return np.dtype(dtype), tuple(shape[1:])

    def clip_column(self, name: str) -> np.ndarray:
        """One column of the clip table (strings as str), checked against its digest."""
        return self._column(f"clips/{name}")

    def _table(self, group: str, columns: dict[str, object]) -> pd.DataFrame:
        import pandas as pd  # here, not at the top: data_prep writes shards without pandas' 0.3 s import

        return pd.DataFrame({name: self._column(f"{group}/{name}") for name in columns})

    @property
    def clips(self) -> pd.DataFrame:
        """The clip table, indexed by clip index."""
        if self._clips is None:
            self._clips = self._table("clips", CLIP_COLUMNS)
        return self._clips

    @property
    def segments(self) -> pd.DataFrame:
        """The segment table, indexed by segment index."""
        if self._segments is None:
            self._segments = self._table("segments", SEGMENT_COLUMNS)
        return self._segments

    @property
    def n_segments(self) -> int:
        with self._reading("/logmel"):
            return int(self._dataset("logmel").shape[0])

    def read(self, what: str, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of "logmel" or "waveform" (a slice, or sorted increasing indices), each checked against its
        stored checksum: a flipped bit anywhere in them raises `DamagedFile`."""
        sums = self._sums.get(what)
        if sums is None:
            sums = self._sums[what] = self._column(f"{CHECKSUM_GROUP}/{what}")
        with self._reading(f"/{what}"):
            values = self._dataset(what)[rows]
            expected = sums[rows]
            if len(expected) != len(values):
                raise Damage(f"/{what} and its checksums disagree on the number of rows")
            bad = np.flatnonzero(row_checksums(values) != expected)
            if len(bad):
                row = np.arange(len(sums))[rows][bad[0]]
                raise Damage(f"/{what} row {row} does not match its checksum")
        return values

    def logmel(self, rows: slice | np.ndarray) -> np.ndarray:
        """Log-mels of the given segment rows (a slice, or sorted increasing indices), verified."""
        return self.read("logmel", rows)

    def waveform(self, rows: slice | np.ndarray) -> np.ndarray:
        """int16 waveforms of the given segment rows (a slice, or sorted increasing indices), verified."""
        return self.read("waveform", rows)

    def check_tables(self) -> None:
        """Every table column against its digest, read a block at a time (memory bounded)."""
        with self._reading("its tables"):
            check_layout(self.file, self._layout)
            check_tables(self.file)

    def clip_segments(self, clip_index: int) -> slice:
        """Rows of one clip's segments, in order."""
        first = int(self.clips.at[clip_index, "first_segment"])
        return slice(first, first + int(self.clips.at[clip_index, "n_segments"]))


def read_shard_attrs(path: Path) -> dict | None:
    """The attributes of an existing shard (complete or not), or None when there is no file; OSError
    when the file is there but HDF5 cannot read its header."""
    if not Path(path).exists():
        return None
    with h5py.File(path, "r") as file:
        return plain_attrs(file.attrs)


def check_shard(path: Path) -> None:
    """Open a shard and check its header, tables and array shapes (not every data row: readers check
    those as they read them); DamagedFile (naming the shard and the fix) if anything is off.

    A truncated or overwritten HDF5 file fails here, before any training; so does a shard whose tables
    do not match their digests. An incomplete or stale shard raises StaleShard (also an AsdError).
    """
    try:
        Shard(path).close()
    except GARBLED as err:  # the header itself is unreadable
        raise damaged(path, first_line(err)) from None
    try:
        verify_shard(path, full=False)
    except Damage as err:
        raise damaged(path, str(err)) from None
