"""Model names on the command line → detector classes and their default configs."""

from __future__ import annotations

from dataclasses import replace

from asd.models.base import Detector

# name -> (module, class, config overrides). Imports are lazy so `--help` stays fast.
MODELS: dict[str, tuple[str, str, dict]] = {
    "ae": ("asd.models.autoencoder", "AutoencoderDetector", {"score": "mse"}),
    "ae-maha": ("asd.models.autoencoder", "AutoencoderDetector", {"score": "mahalanobis"}),
    "embed": ("asd.models.embedding", "EmbeddingDetector", {}),
    "gmm": ("asd.models.gmm", "GmmDetector", {}),
    "ensemble": ("asd.models.ensemble", "EnsembleDetector", {}),
}


def _load_class(name: str) -> type[Detector]:
    import importlib

    module, cls, _ = MODELS[name]
    return getattr(importlib.import_module(module), cls)


def detector_class(model_name: str) -> type[Detector]:
    """The class saved under `model_name` in a checkpoint (the class's own `name`)."""
    for name in MODELS:
        cls = _load_class(name)
        if cls.name == model_name:
            return cls
    raise KeyError(f"unknown model {model_name!r} in checkpoint; known: {sorted(MODELS)}")


def make_detector(name: str, **overrides) -> Detector:
    """A fresh detector for a command-line model name; `overrides` set fields of its config
    (e.g. `members` of the ensemble)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    cls = _load_class(name)
    return cls(replace(cls.config_class(), **{**MODELS[name][2], **overrides}))
