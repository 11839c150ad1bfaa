"""Checks a stage makes before it starts work on a machine type: its shards open and are whole, leftovers
of a killed run are gone. Each failure is an AsdError naming the file and the way to fix it."""

from __future__ import annotations

from pathlib import Path

from asd.errors import DamagedFile


def check_shard(path: Path) -> None:
    """Open a shard and read its tables and array shapes; DamagedFile (naming the shard) if that fails.

    A truncated or overwritten HDF5 file fails here, before any training; data_prep treats such a file as
    missing and rebuilds it. An incomplete or stale shard raises StaleShard (also an AsdError).
    """
    from asd.cache.shard import Shard

    rebuild = "`python source/data_prep.py` rebuilds it (same --raw-dir/--out-dir as before)"
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


def remove_partial_files(folder: Path) -> list[Path]:
    """Remove the temporary `.<name>.partial` files a killed run of this stage left in `folder`."""
    removed = []
    if Path(folder).is_dir():
        for path in Path(folder).glob(".*.partial"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
