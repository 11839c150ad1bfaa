"""Common types for machine generators: attribute combinations, the per-clip context, the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Attributes = tuple[tuple[str, str], ...]  # ordered (name, value) pairs, e.g. (("spd", "31V"), ("load", "2"))


@dataclass(frozen=True)
class ClipContext:
    """Everything a machine generator needs to render one clip.

    ``rng`` drives the normal sound; ``anomaly_rng`` drives only the anomaly, so that with strength 0 an
    anomalous clip is drawn from exactly the same distribution as a normal one.
    """

    rng: np.random.Generator
    anomaly_rng: np.random.Generator
    attributes: Attributes
    n: int
    sr: int
    anomaly: str | None  # anomaly kind, None for normal clips
    strength: float  # effective anomaly strength (already multiplied by the user's anomaly_strength)

    @property
    def duration(self) -> float:
        return self.n / self.sr

    def attr(self, name: str) -> str:
        """Value string of attribute ``name``."""
        return dict(self.attributes)[name]

    def s(self, kind: str) -> float:
        """Strength of anomaly ``kind`` in this clip (0 when the clip has another or no anomaly)."""
        return self.strength if self.anomaly == kind else 0.0


Renderer = Callable[[ClipContext], np.ndarray]


@dataclass(frozen=True)
class MachineType:
    """A synthetic machine type: attribute combinations per domain, anomaly kinds and the renderer.

    ``renderer`` returns float32 mono audio at a design level of roughly unit RMS for normal clips.
    ``base_strength`` calibrates each anomaly kind so that the default dataset is neither trivial nor
    impossible (see bench/synth_difficulty.py).
    """

    name: str
    source_attributes: tuple[Attributes, ...]
    target_attributes: tuple[Attributes, ...]
    anomalies: tuple[str, ...]
    base_strength: float
    renderer: Renderer

    def attributes_for(self, domain: str) -> tuple[Attributes, ...]:
        return self.source_attributes if domain == "source" else self.target_attributes


def grid(**values: tuple[str, ...]) -> tuple[Attributes, ...]:
    """All combinations of attribute values, first attribute varying slowest."""
    combos: list[Attributes] = [()]
    for name, vals in values.items():
        combos = [c + ((name, v),) for c in combos for v in vals]
    return tuple(combos)


def attribute_string(attributes: Attributes) -> str:
    """DCASE file-name tail, e.g. ``spd_31V_load_2``."""
    return "_".join(f"{k}_{v}" for k, v in attributes)
