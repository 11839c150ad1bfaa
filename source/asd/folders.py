"""Folder and file writing shared by every stage (run folders, the cache, synthetic data, pictures): the
one check of a folder a command will write into, and files written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asd.errors import BadInput, BadState


def check_writable_dir(path: str | Path, option: str) -> Path:
    """Make sure `path` is (or can become) a folder this process can write into; BadInput otherwise.

    Checked by writing and removing a probe file, which also catches read-only mounts and the root user
    on read-only file systems, where permission bits alone say nothing.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as err:
        raise BadInput(f"{option} {path} is not writable ({err.strerror or err}); choose another folder") from None
    return path


def check_can_write_dir(path: str | Path, option: str) -> Path:
    """`check_writable_dir` without making anything: `path`, or the nearest folder above it that exists,
    must take a file (for commands that may still find they have nothing to write)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {path} is a file, not a folder; give a folder path")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        _probe(existing)
    except OSError as err:
        raise BadInput(f"{option} {path} is not writable ({err.strerror or err}); choose another folder") from None
    return path


def check_out_file(path: str | Path, option: str) -> Path:
    """A file the command will write at the end: its folder must exist and be writable, and it must not be
    a folder itself. Checked first, so a long computation is never lost to a bad output path."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{option} {path} is a folder; give a file name, e.g. {path / 'scores.csv'}")
    if not path.parent.is_dir():
        raise BadInput(f"{option} {path}: folder {path.parent} does not exist; create it first")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"{option} {path} exists and is not writable")
    try:
        _probe(path.parent)
    except OSError as err:
        raise BadInput(f"{option} {path}: folder {path.parent} is not writable ({err.strerror or err})") from None
    return path


def _probe(folder: Path) -> None:
    """Write and remove a file in `folder` (OSError when that cannot be done)."""
    probe = folder / f".asd-write-check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def write_atomically(path: str | Path, text: str) -> Path:
    """Write a small text file through a temporary name of this process's own, renamed when complete (a
    reader never sees half of it; two processes never share the temporary); BadInput when it cannot be."""
    path = Path(path)
    tmp = partial_name(path)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"cannot write {path}: {err.strerror or err}") from None
    return path


def partial_name(path: str | Path) -> Path:
    """The temporary name of `path` while this process writes it: `.<name>.<pid>.partial` beside it (hidden,
    never read as a result, never shared by two processes, and removed by the next run if left)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Write `path` whole or not at all: the block writes the temporary path it is given, which is renamed
    to `path` when the block ends. A write that fails (a full disk, a file size limit) removes the temporary
    and raises BadState naming `path`; any other error removes it too and keeps its traceback."""
    path = Path(path)
    tmp = partial_name(path)
    try:
        yield tmp
        tmp.replace(path)
    except OSError as err:
        raise BadState(f"cannot write {path}: {err.strerror or err}; nothing was written there") from None
    finally:
        tmp.unlink(missing_ok=True)
