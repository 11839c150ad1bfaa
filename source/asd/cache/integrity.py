"""What a shard stores to prove its bytes are the ones written, and the checks that use it.

A shard carries, besides its data (`asd.cache.shard`):

    /checksums/waveform, /checksums/logmel   uint64 [n_segments]: `row_checksums` of every stored row
    attribute `digests`                      JSON {dataset: digest} of every 1-D table (clips/*, segments/*,
                                             checksums/*), each an order-sensitive digest of its rows
    attribute `header_digest`                a digest of the attributes that decide what the data means

Per-row checksums were chosen over HDF5's fletcher32 filter because data_prep computes them anyway (in
its workers, to verify the file before the rename), so storing them costs 16 bytes a segment and no CPU,
and because a reader can verify exactly the rows it reads (fletcher32 makes HDF5 read and checksum the
whole chunk around every scattered row); docs/reliability.md has the figures.

data_prep's fast path for a shard it did not just write: `asd.cache.shard.verify_shard(path, full=False)`
checks the header, every dataset's type and shape, every table against its digest (milliseconds), and
trusts the data rows
only when the shard's stamp (`.<name>.verified`, its size, times and inode when they were last fully
verified) still matches; otherwise `full=True` reads every row back. A reader that finds a damaged row
removes the stamp, so the next data_prep verifies that shard in full and rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

BIG_DATASETS = ("waveform", "logmel")
CHECKSUM_GROUP = "checksums"
DIGESTS_ATTR = "digests"
HEADER_DIGEST_ATTR = "header_digest"
# Attributes that vary between identical builds (when, from where, which input files): left out of the
# header digest. A damaged one is harmless: it only says when a shard was made or makes data_prep rebuild it.
VOLATILE_ATTRS = frozenset({"created_utc", "source_root", "source_digest", HEADER_DIGEST_ATTR})
BLOCK_BYTES = 8 * 1024 * 1024  # full verification reads a big dataset in blocks of about this much
TABLE_BLOCK_ROWS = 65536  # and a table column in blocks of this many rows
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # the writer's chunks hold at most 1 MiB (SPEC §4); larger ones are damage

_WEIGHTS: dict[int, np.ndarray] = {}


# What h5py raises for a file whose bytes are garbled (a damaged header can even give a TypeError, e.g.
# "Unknown string encoding"): caught only around reads of a shard, where it means damage, not a bug.
GARBLED = (OSError, KeyError, RuntimeError, ValueError, TypeError)


class Damage(Exception):
    """Internal: a shard does not hold what it should (the text says what); callers turn it into their
    own error naming the shard and the fix."""


def row_checksums(block: np.ndarray) -> np.ndarray:
    """One 64-bit checksum per row of a numeric block: each row's bytes as little-endian words, dotted
    with fixed pseudo-random odd weights (wrapping). About 8 GB/s on one core: cheap enough to run on
    every byte written and read."""
    rows = np.ascontiguousarray(block).reshape(len(block), -1).view(np.uint8)
    width = rows.shape[1]
    if width % 8:
        rows = np.concatenate([rows, np.zeros((len(rows), 8 - width % 8), np.uint8)], axis=1)
    words = rows.view("<u8")
    weights = _WEIGHTS.get(words.shape[1])
    if weights is None:
        weights = np.random.default_rng(words.shape[1]).integers(0, 2**63, words.shape[1], dtype=np.uint64)
        weights = _WEIGHTS.setdefault(words.shape[1], weights * np.uint64(2) + np.uint64(1))
    return np.einsum("ij,j->i", words, weights)  # wraps modulo 2^64 like the product and sum; one pass, no temporary


class Digest:
    """Order-sensitive digest of a dataset's rows, the same however the rows are split into blocks."""

    def __init__(self) -> None:
        self.value = np.uint64(0)
        self.rows = 0

    def add(self, values) -> None:
        if isinstance(values, np.ndarray) and values.dtype != object:
            self.add_sums(row_checksums(values))
        else:  # strings: CRC of each UTF-8 value (as h5py reads them, bytes, or as written, str)
            encoded = (v if isinstance(v, bytes) else str(v).encode() for v in values)
            self.add_sums(np.fromiter(map(zlib.crc32, encoded), np.uint64, len(values)))

    def add_sums(self, sums: np.ndarray) -> None:
        """Take the next rows by their `row_checksums` (computed elsewhere, e.g. in a worker thread)."""
        position = np.arange(self.rows + 1, self.rows + len(sums) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            self.value = np.uint64(self.value + (np.asarray(sums, np.uint64) * (
                position * np.uint64(0x9E3779B97F4A7C15))).sum(dtype=np.uint64))
        self.rows += len(sums)

    @property
    def hex(self) -> str:
        return f"{int(self.value):016x}"


def plain_attrs(attrs: Mapping) -> dict:
    """HDF5 attributes as plain Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def header_digest(attrs: Mapping) -> str:
    """Digest of the attributes that decide what a shard's data means (every one but `VOLATILE_ATTRS`)."""
    # str(name): a damaged name may read back as bytes, which then differs (and sorts) like any other
    kept = {str(k): v for k, v in plain_attrs(attrs).items() if k not in VOLATILE_ATTRS}
    text = json.dumps(kept, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """`file[name]`, which must be a dataset (a damaged link can make it missing or a group)."""
    item = file.get(name)
    if not isinstance(item, h5py.Dataset):
        raise Damage(f"/{name} is {'missing' if item is None else 'not a dataset'}")
    return item


def table_names(file: h5py.File) -> list[str]:
    """Every 1-D table dataset of a shard (clip and segment columns, stored checksums)."""
    names = []
    for group in ("clips", "segments", CHECKSUM_GROUP):
        if not isinstance(file.get(group), h5py.Group):
            raise Damage(f"its /{group} group is missing")
        names += [f"{group}/{name}" for name in file[group]]
    return names


def column_digest(dataset: h5py.Dataset, block_rows: int = TABLE_BLOCK_ROWS) -> Digest:
    """The digest of a table column, read a block at a time (memory bounded whatever its length)."""
    digest = Digest()
    for start in range(0, dataset.shape[0], block_rows):
        digest.add(dataset[start:start + block_rows])  # strings as stored, UTF-8 bytes: no decoding needed
    return digest


def stored_digests(attrs: Mapping) -> dict[str, str]:
    """The `digests` attribute, checked to be what the writer stores."""
    text = attrs.get(DIGESTS_ATTR)
    try:
        digests = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        digests = None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise Damage("its table digests are missing or unreadable")
    return digests


def check_header(attrs: Mapping) -> None:
    """The header digest matches the attributes."""
    stored = attrs.get(HEADER_DIGEST_ATTR)
    if not isinstance(stored, str):
        raise Damage("it has no header digest")
    if stored != header_digest(attrs):
        raise Damage("its attributes do not match their digest")


def check_dataset(file: h5py.File, name: str, dtype: object, shape: tuple[int, ...]) -> h5py.Dataset:
    """`file[name]` as the layout says: a dataset of exactly that type (byte order included: a flipped bit
    there would read every value byte-swapped, with the same raw bytes and checksums) and shape, in chunks
    of at most `MAX_CHUNK_BYTES`. Checked before anything is read: a damaged shape could ask for terabytes."""
    item = dataset(file, name)
    want = np.dtype(dtype)
    if h5py.check_string_dtype(want) is not None:
        found = h5py.check_string_dtype(item.dtype)
        if found is None or found.encoding != "utf-8" or found.length is not None:
            raise Damage(f"/{name} is not a column of UTF-8 strings")
    elif item.dtype != want:
        raise Damage(f"/{name} has type {item.dtype.str}, not {want.str}")
    if item.shape != tuple(shape):
        raise Damage(f"/{name} has shape {item.shape}, the header says {tuple(shape)}")
    chunks = item.chunks
    if chunks is None or chunks[1:] != tuple(shape[1:]) or chunks[0] < 1 or \
            int(np.prod(chunks)) * item.dtype.itemsize > MAX_CHUNK_BYTES:
        raise Damage(f"/{name} has a damaged chunk layout {chunks}")
    return item


def check_layout(file: h5py.File, layout: Mapping[str, tuple[object, tuple[int, ...]]]) -> None:
    """Every dataset of `layout` ({name: (dtype, shape)}) as it says, and the tables exactly those the
    header's digests cover (no more, no fewer)."""
    digests = stored_digests(file.attrs)
    names = table_names(file)
    if set(names) != set(digests) or not set(names) <= set(layout):
        odd = sorted((set(digests) ^ set(names)) | (set(names) - set(layout)))
        raise Damage(f"its tables and their digests disagree ({', '.join(odd[:3])})")
    for name, (dtype, shape) in layout.items():
        check_dataset(file, name, dtype, shape)


def check_tables(file: h5py.File) -> None:
    """Every table column equal to its digest (after `check_layout`)."""
    digests = stored_digests(file.attrs)
    for name in table_names(file):
        if column_digest(dataset(file, name)).hex != digests[name]:
            raise Damage(f"/{name} does not match its digest")


def iter_blocks(dataset: h5py.Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """Every row of a big dataset as (first row, block) of about `BLOCK_BYTES`, read a whole stored chunk
    at a time (`read_direct_chunk`: no chunk cache, no copies). The last chunk is stored whole (zero
    padded past the end); only the rows inside the dataset are yielded."""
    chunk_rows = dataset.chunks[0]
    row_bytes = int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
    stage = np.empty((max(1, BLOCK_BYTES // (row_bytes * chunk_rows)) * chunk_rows, *dataset.shape[1:]),
                     dataset.dtype)
    flat, zeros, read = stage.reshape(-1).view(np.uint8), (0,) * (dataset.ndim - 1), dataset.id.read_direct_chunk
    rows = dataset.shape[0]
    for block_start in range(0, rows, len(stage)):
        block_rows = min(len(stage), rows - block_start)
        for start in range(0, block_rows, chunk_rows):
            read((block_start + start, *zeros), out=flat[start * row_bytes:])
        yield block_start, stage[:block_rows]


def check_rows(file: h5py.File) -> None:
    """Every row of the big datasets equals its stored checksum (reads the whole shard)."""
    for name in BIG_DATASETS:
        sums = dataset(file, f"{CHECKSUM_GROUP}/{name}")[()]
        for start, block in iter_blocks(dataset(file, name)):
            bad = np.flatnonzero(row_checksums(block) != sums[start:start + len(block)])
            if len(bad):
                raise Damage(f"/{name} row {start + int(bad[0])} does not match its checksum")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- the stamp: when the data rows were last read back in full ------------------------------------------

def stamp_path(shard: Path) -> Path:
    return Path(shard).with_name(f".{Path(shard).name}.verified")


def _identity(shard: Path) -> dict[str, int]:
    """What changes when anything writes to the file or replaces it (the change time cannot be set back)."""
    st = os.stat(shard)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
            "device": st.st_dev}


def write_stamp(shard: Path) -> None:
    """Record that `shard`, as it is now on disk, was read back in full. Best effort: without a stamp the
    next data_prep verifies the shard in full again, nothing worse."""
    target = stamp_path(shard)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(json.dumps(_identity(shard)))
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def stamp_matches(shard: Path) -> bool:
    """Whether the shard is byte for byte the file last verified in full (its stamp still matches)."""
    try:
        return json.loads(stamp_path(shard).read_text()) == _identity(shard)
    except (OSError, ValueError):
        return False


def forget_stamp(shard: Path) -> None:
    """A reader found damage: the next data_prep must verify this shard in full (and rebuild it)."""
    with contextlib.suppress(OSError):
        stamp_path(shard).unlink()
