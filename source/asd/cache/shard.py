"""The HDF5 shard: one file per dataset x machine type x split, holding every 1-second segment (SPEC §4).

Layout of a shard:

    /            attributes: schema_version, every FeatureConfig field, fingerprint, feature_config (JSON),
                 dataset, machine, split, source_root, source_digest, package_version, created_utc,
                 n_clips, n_segments, complete
    /clips/*     the clip table, one 1-D dataset per column (CSR-style: first_segment, n_segments)
    /segments/*  the segment table: clip_index, segment_id, start_sample, name
    /waveform    int16   [n_segments, segment_samples]
    /logmel      float32 [n_segments, n_mels, n_frames]

A shard is written (by :mod:`asd.cache.writer`) under a temporary name and renamed when complete and
verified, so a file with the final name is always whole. Readers open the file lazily and reopen after a
fork (safe in DataLoader workers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from asd.cache.features import SCHEMA_VERSION, FeatureConfig
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
BLOCK_BYTES = 8 * 1024 * 1024  # the commit reads a big dataset back in blocks of about this much


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


class Shard:
    """Read access to a complete shard. Opens lazily, reopens after a fork, pickles without its handle."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._clips: pd.DataFrame | None = None
        self._segments: pd.DataFrame | None = None
        attrs = self.attrs
        self.close()  # checked and closed again: nothing stays open across a later fork
        if not attrs.get("complete", False):
            raise StaleShard(f"{self.path} is not a complete shard (interrupted write?); rerun data_prep")
        if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StaleShard(f"{self.path} has schema version {attrs.get('schema_version')}, this "
                             f"version reads {SCHEMA_VERSION}; rebuild it with data_prep --force")

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}

    @property
    def fingerprint(self) -> str:
        return str(self.file.attrs["fingerprint"])

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(**json.loads(self.file.attrs["feature_config"]))

    @property
    def machine(self) -> str:
        return str(self.file.attrs["machine"])

    def _table(self, group: str) -> pd.DataFrame:
        import pandas as pd  # here, not at the top: data_prep writes shards without pandas' 0.3 s import

        columns = {}
        for name, dataset in self.file[group].items():
            columns[name] = dataset.asstr()[()] if dataset.dtype == STR else dataset[()]
        return pd.DataFrame(columns)

    @property
    def clips(self) -> pd.DataFrame:
        """The clip table, indexed by clip index."""
        if self._clips is None:
            self._clips = self._table("clips")[list(CLIP_COLUMNS)]
        return self._clips

    @property
    def segments(self) -> pd.DataFrame:
        """The segment table, indexed by segment index."""
        if self._segments is None:
            self._segments = self._table("segments")[list(SEGMENT_COLUMNS)]
        return self._segments

    @property
    def n_segments(self) -> int:
        return int(self.file["logmel"].shape[0])

    def logmel(self, rows: slice | np.ndarray) -> np.ndarray:
        """Log-mels of the given segment rows (a slice, or sorted increasing indices)."""
        return self.file["logmel"][rows]

    def waveform(self, rows: slice | np.ndarray) -> np.ndarray:
        """int16 waveforms of the given segment rows (a slice, or sorted increasing indices)."""
        return self.file["waveform"][rows]

    def clip_segments(self, clip_index: int) -> slice:
        """Rows of one clip's segments, in order."""
        first = int(self.clips.at[clip_index, "first_segment"])
        return slice(first, first + int(self.clips.at[clip_index, "n_segments"]))


def read_shard_attrs(path: Path) -> dict | None:
    """The attributes of an existing complete shard, or None if there is none (or it is unreadable)."""
    try:
        with h5py.File(path, "r") as file:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in file.attrs.items()}
    except (OSError, KeyError):
        return None
    return attrs if attrs.get("complete") else None


def check_shard(path: Path) -> None:
    """Open a shard and read its tables and array shapes; DamagedFile (naming the shard) if that fails.

    A truncated or overwritten HDF5 file fails here, before any training; data_prep treats such a file as
    missing and rebuilds it. An incomplete or stale shard raises StaleShard (also an AsdError).
    """
    rebuild = f"`{PREP_COMMAND}` rebuilds it (same --raw-dir/--out-dir as before)"
    try:
        shard = Shard(path)
        clips, segments = shard.clips, shard.segments
        shapes = shard.file["waveform"].shape, shard.file["logmel"].shape
        shard.close()
    except (OSError, KeyError) as err:  # h5py: truncated/garbled file, missing dataset or attribute
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedFile(f"shard {path} is damaged ({reason}); {rebuild}") from None
    n_segments = len(segments)
    if shapes[0][0] != n_segments or shapes[1][0] != n_segments or \
            int(clips["n_segments"].sum()) != n_segments:
        raise DamagedFile(f"shard {path} is damaged (its tables and arrays disagree on the number of "
                          f"segments); {rebuild}")
