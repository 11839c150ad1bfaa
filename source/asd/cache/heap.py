"""Keep freed memory in the process for reuse (glibc's allocator), so per-clip temporaries cost no page faults.

Turning one 10 s clip into a log-mel allocates and frees a few arrays of 0.5-2.5 MB (the STFT frames, the
spectrum, the mel power). glibc serves blocks that size with a fresh `mmap` and unmaps them on free, or
trims them off the top of its heap, so every clip faults the same pages in again (the kernel zeroes each
one): ~600 page faults per clip, about half of the decode + log-mel CPU time on our 2-core machine, and
worse with two threads, which then also take turns on the process's memory map. Raising the two
thresholds makes those blocks come from the heap and stay there between clips: the process keeps what
it used at its peak (data_prep's peak stays ~0.2 GB) instead of returning it after every clip.
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks below 32 MB from its heap and to keep up to 256 MB of freed memory.

    Process-wide and not undone (data_prep and its Dask shard tasks call it: short-lived processes). Returns
    whether the setting took: False off Linux, on another C library (musl has no effective `mallopt`),
    or when glibc refuses a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # not glibc
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_ok and trim_ok
