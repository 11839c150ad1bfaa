"""Listing a folder tree, the one way every command does it (data_prep, score, explore, the processed folder
`main` reads): symbolic links to folders are followed, each real folder is read once (a link back to a
folder above it, or a second link to a folder already read, is reported instead of looping), and every
folder that cannot be read is reported. Nothing below the root is dropped without a reason.

Which files a command then uses is its own business; the audio extensions every command accepts live here
so that they are the same everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Clip files read from folders: matched whatever the case (`.WAV`, `.Wav`). FLAC is lossless and decoded
# by the same function as wav (soundfile), and `score` always scored a FLAC named on its command line, so
# folders accept it too.
AUDIO_SUFFIXES = (".wav", ".flac")


def is_audio_name(name: str | Path) -> bool:
    """Whether a file name has an audio extension every command reads (any case)."""
    return Path(name).suffix.lower() in AUDIO_SUFFIXES


@dataclass
class Tree:
    """Every file below a root (links to files and broken links included), sorted, and the folders that
    were not read, each with the reason."""

    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # every folder read below the root (links included)
    unread: list[tuple[Path, str]] = field(default_factory=list)


def walk(root: str | Path) -> Tree:
    """Every file below `root`, following symbolic links to folders, each real folder once."""
    root = Path(root)
    tree = Tree()
    try:
        first = root.stat()
    except OSError as err:
        tree.unread.append((root, f"cannot be read ({err.strerror or err})"))
        return tree
    seen: dict[tuple[int, int], Path] = {(first.st_dev, first.st_ino): root}

    def unreadable(err: OSError) -> None:
        tree.unread.append((Path(err.filename or root), f"folder cannot be read ({err.strerror or err})"))

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            path = here / name
            try:
                st = path.stat()
            except OSError as err:
                tree.unread.append((path, f"folder cannot be read ({err.strerror or err})"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:  # a loop (a link to a folder above) or a second way to a folder already listed
                what = "a link back to" if _is_above(seen[key], path) else "the same folder as"
                tree.unread.append((path, f"symbolic link not followed: {what} {seen[key]}, which is read once"))
                continue
            seen[key] = path
            kept.append(name)
        dirs[:] = kept  # os.walk descends only into these, in this order
        tree.folders += [here / name for name in kept]
        tree.files += [here / name for name in sorted(files)]
    return tree


def _is_above(folder: Path, path: Path) -> bool:
    return path.is_relative_to(folder)
