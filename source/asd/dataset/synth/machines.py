"""Registry of the synthetic machine types."""

from __future__ import annotations

from .linear import SLIDER, VALVE
from .machine_base import MachineType
from .rotating import FAN, GEARBOX

MACHINES: dict[str, MachineType] = {m.name: m for m in (FAN, GEARBOX, SLIDER, VALVE)}
MACHINE_TYPES: tuple[str, ...] = tuple(MACHINES)


def get_machine(name: str) -> MachineType:
    """Look a machine type up by name, with a clear error listing the available ones."""
    try:
        return MACHINES[name]
    except KeyError:
        raise ValueError(f"unknown machine type {name!r}; available: {', '.join(MACHINE_TYPES)}") from None
