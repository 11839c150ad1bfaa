"""Model names on the command line → detector classes and their default configs: a plain table.

Nothing here imports torch or a model (the classes are loaded by name when a model is made), so the
command line takes its choices straight from this table and `--help` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

# name -> (module, class, config overrides)
MODELS: dict[str, tuple[str, str, dict]] = {
    "ae": ("asd.models.autoencoder", "AutoencoderDetector", {"score": "mse"}),
    "ae-maha": ("asd.models.autoencoder", "AutoencoderDetector", {"score": "mahalanobis"}),
    "embed": ("asd.models.embedding", "EmbeddingDetector", {}),
    "gmm": ("asd.models.gmm", "GmmDetector", {}),
    "twobranch": ("asd.models.twobranch", "TwoBranchDetector", {}),
    "ensemble": ("asd.models.ensemble", "EnsembleDetector", {}),
    # gmm alone; from 500 normal training clips per machine type on, gmm + embed in one calibrated ensemble
    "auto": ("asd.models.ensemble", "EnsembleDetector",
             {"members": ("gmm", "embed"), "later_members_min_clips": 500}),
}
# Best on the five real sets (all small: `auto` is `gmm` there) and on the synthetic set at DCASE size
# (where `embed` joins), in bench/bench_quality.py; docs/quality.md, "Size-aware default".
DEFAULT_MODEL = "auto"
# How segment scores become a clip score (asd.models.base.aggregate_clip_scores).
REDUCERS = ("mean", "max", "median", "p90")
# torch threads per training process. One: on a machine busy with other work, more threads than free cores
# made the autoencoder several times slower (docs/speed.md, "Threads"); 0 asks for every core.
DEFAULT_THREADS = 1


def model_class(name: str) -> type:
    """The detector class (an `asd.models.base.Detector`) of a command-line model name."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    module, cls, _ = MODELS[name]
    return getattr(importlib.import_module(module), cls)


def detector_class(saved_name: str) -> type:
    """The class saved under `saved_name` in a checkpoint (the class's own `name`)."""
    for name in MODELS:
        cls = model_class(name)
        if cls.name == saved_name:
            return cls
    raise KeyError(f"unknown model {saved_name!r} in checkpoint; known: {sorted(MODELS)}")


def make_detector(name: str, **overrides: Any) -> Any:
    """A fresh `asd.models.base.Detector` for a command-line model name; `overrides` set fields of its
    config (e.g. `members` of the ensemble). The table imports no model, so the result is not typed here."""
    cls = model_class(name)
    return cls(replace(cls.config_class(), **{**MODELS[name][2], **overrides}))
