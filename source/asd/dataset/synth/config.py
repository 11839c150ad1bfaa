"""Configuration of a synthetic dataset and the clip-count rule."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .machines import MACHINE_TYPES, get_machine

NAMINGS = ("2024", "2020")
CONFIG_FILE = "synth_config.json"
GENERATOR_VERSION = 1  # bump when the sound design changes, so datasets document which one made them

# full-scale counts (DCASE 2022-2024 development sets) and the floors that keep categories meaningful
FULL_SOURCE_TRAIN, FULL_TARGET_TRAIN, FULL_TEST = 990, 10, 50
MIN_SOURCE_TRAIN, MIN_TARGET_TRAIN, MIN_TEST = 20, 3, 5
IDS_2020 = ("00", "02")


@dataclass(frozen=True)
class Counts:
    """Clips per machine type: train per domain, and test per domain and label."""

    source_train: int
    target_train: int
    test: int


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of ``generate_dataset`` (written to ``synth_config.json`` in the dataset root)."""

    seed: int = 0
    scale: float = 1.0
    machines: tuple[str, ...] = MACHINE_TYPES
    naming: str = "2024"
    stereo: bool = False
    hidden_attributes: tuple[str, ...] = ()
    anomaly_strength: float = 1.0
    clip_seconds: float = 10.0
    sample_rate: int = 16000
    n_jobs: int = -1

    def __post_init__(self) -> None:
        # accept lists/None from callers and the CLI, store tuples so the config stays hashable
        machines = MACHINE_TYPES if self.machines is None else tuple(self.machines)
        object.__setattr__(self, "machines", machines)
        object.__setattr__(self, "hidden_attributes", tuple(self.hidden_attributes))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if not machines:
            raise ValueError("machines must name at least one machine type")
        if len(set(machines)) != len(machines):
            raise ValueError(f"machines contains duplicates: {machines}")
        for name in machines + self.hidden_attributes:
            get_machine(name)
        if self.naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got {self.naming!r}")
        if self.anomaly_strength < 0:
            raise ValueError(f"anomaly_strength must be >= 0, got {self.anomaly_strength!r}")
        if not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {self.clip_seconds!r}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate!r}")

    @property
    def n_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def counts(self) -> Counts:
        """Clip counts for this scale: full-scale counts times ``scale``, rounded, with floors."""
        return Counts(
            source_train=max(MIN_SOURCE_TRAIN, round(FULL_SOURCE_TRAIN * self.scale)),
            target_train=max(MIN_TARGET_TRAIN, round(FULL_TARGET_TRAIN * self.scale)),
            test=max(MIN_TEST, round(FULL_TEST * self.scale)),
        )

    def to_json(self) -> str:
        data = {"generator_version": GENERATOR_VERSION, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SynthConfig:
        data = json.loads(text)
        data.pop("generator_version", None)
        return cls(**data)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / CONFIG_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def make_config(machines: Sequence[str] | None = None, **kwargs: object) -> SynthConfig:
    """Build a config from keyword arguments as ``generate_dataset`` receives them."""
    return SynthConfig(machines=MACHINE_TYPES if machines is None else tuple(machines), **kwargs)  # type: ignore[arg-type]
