"""Folder and file writing shared by every stage (run folders, the cache, synthetic data, pictures): the
one check of a folder a command will write into, and small text files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from asd.errors import BadInput


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"cannot write {path}: {err.strerror or err}") from None
    return path
