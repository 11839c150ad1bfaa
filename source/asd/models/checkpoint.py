"""Checkpoint files (`model.pt`): a fitted detector saved and loaded back.

A checkpoint holds the model's name and config, its fitted state (tensors and plain values only, so it
loads with `torch.load(weights_only=True)` and never runs pickled code), the feature fingerprint and
settings of the shard it was trained on, its thresholds, its loss history, its fit settings and the
configuration of the run that made it, as that run wrote it into `config.json`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from asd.errors import MAIN_COMMAND, DamagedFile, MissingModel
from asd.models.base import Detector, FitConfig
from asd.models.registry import MODELS, detector_class

_KEYS = ("model", "config", "fingerprint", "feature_config", "thresholds", "history", "state")


def save_detector(detector: Detector, path: str | Path, run_config: dict[str, Any] | None = None) -> Path:
    """Write `detector` to `path` through a temporary name (a save cut short never leaves a `model.pt`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": detector.name, "config": asdict(detector.config), "fingerprint": detector.fingerprint_,
        "feature_config": detector.feature_config_, "thresholds": detector.thresholds_,
        "history": detector.history_,
        "fit_config": detector.fit_config_.to_dict() if detector.fit_config_ is not None else None,
        "run_config": run_config, "state": detector._state(),
        "decision_scores": (None if detector.decision_scores_ is None else
                            {column: detector.decision_scores_[column].tolist()
                             for column in detector.decision_scores_.columns}),
    }
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents as saved (MissingModel / DamagedFile when it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise MissingModel(f"no model at {path}; train one first with `{MAIN_COMMAND} train`")
    damaged = (f"{path} is damaged or is not a model saved by this project ({{}}); retrain it with "
               f"`{MAIN_COMMAND} train` (it is never loaded with arbitrary pickled code)")
    try:  # only reading the file is guarded here: a failure in it means a damaged file, not a bug
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - garbage bytes make the unpickler raise nearly anything
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:  # never pass on unsafe advice
            reason = "it holds objects other than tensors and plain values"
        raise DamagedFile(damaged.format(reason)) from None
    if not isinstance(payload, dict) or any(k not in payload for k in _KEYS) or \
            not ({"fit_config", "train_config"} & set(payload)):
        raise DamagedFile(damaged.format("not a checkpoint: expected keys " + ", ".join((*_KEYS, "fit_config"))))
    try:
        detector_class(payload["model"])
    except KeyError:
        raise DamagedFile(damaged.format(f"unknown model {payload['model']!r}; this version knows "
                                         f"{sorted(MODELS)}")) from None
    return payload


def detector_from_payload(payload: dict[str, Any]) -> Detector:
    """Rebuild a fitted detector from a checkpoint's contents (a member of an ensemble too)."""
    cls = detector_class(payload["model"])
    detector = cls(cls.config_class(**payload["config"]))
    detector.fingerprint_ = payload["fingerprint"]
    detector.feature_config_ = payload["feature_config"]
    detector.thresholds_ = payload.get("thresholds", {})
    detector.history_ = payload.get("history", [])
    # checkpoints written before the fit settings had their own record kept them as "train_config"
    record = payload.get("fit_config") or payload.get("train_config")
    detector.fit_config_ = FitConfig.from_dict(record) if record is not None else None
    if payload.get("decision_scores") is not None:
        import pandas as pd

        detector.decision_scores_ = pd.DataFrame(payload["decision_scores"])
    detector._load_state(payload["state"])
    return detector


def load_detector(path: str | Path) -> Detector:
    """Rebuild a fitted detector from its checkpoint (MissingModel / DamagedFile when it cannot)."""
    return detector_from_payload(read_checkpoint(path))
