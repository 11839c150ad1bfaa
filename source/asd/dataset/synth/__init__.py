"""Synthetic DCASE-like machine sound datasets (four machine types, source/target domains, anomalies).

Used for tests, benchmarks and demos where real DCASE data is not at hand::

    from asd.dataset.synth import generate_dataset
    manifest = generate_dataset("data/raw/synth", seed=0, scale=0.1)
"""

from .config import SynthConfig
from .dataset import generate_dataset, plan_clips, render_clip
from .machines import MACHINE_TYPES

__all__ = ["MACHINE_TYPES", "SynthConfig", "generate_dataset", "plan_clips", "render_clip"]
