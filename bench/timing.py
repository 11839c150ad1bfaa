"""Timing helper shared by the benchmark scripts (imported as a sibling: `python bench/<script>.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(function: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``function``, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
