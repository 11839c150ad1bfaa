"""Where and how a model computes: the device, the seed, and the number of torch threads."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from asd.errors import BadInput


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name} was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise BadInput(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that the same seed gives the same scores."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        # Only GPU kernels have non-deterministic variants to switch off; on a CPU-only machine the switch
        # would cost ~110 MiB of resident memory for nothing (it loads the CUDA libraries).
        torch.use_deterministic_algorithms(True, warn_only=True)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Use `threads` intra-op threads (0: every available core); returns the number set."""
    n = threads if threads > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
