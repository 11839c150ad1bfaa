"""Checkpoint files (`model.pt`): a fitted detector saved and loaded back.

A checkpoint holds the model's name and config, its fitted state (tensors and plain values only, so it
loads with `torch.load(weights_only=True)` and never runs pickled code), the feature fingerprint and
settings of the shard it was trained on, its thresholds, its loss history, its fit settings and the
configuration of the run that made it, as that run wrote it into `config.json`.

Beside it, `model.pt.sha256` holds the file's SHA-256 (in `sha256sum -c` format): every load checks it,
so a model.pt with a flipped bit, cut short or replaced is refused by name, never loaded as valid.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from asd.errors import MAIN_COMMAND, DamagedFile, MissingModel
from asd.models.base import Detector, FitConfig
from asd.models.registry import MODELS, detector_class
from asd.version import __version__

_KEYS = ("model", "config", "fingerprint", "feature_config", "thresholds", "history", "state")
FORMAT = 1  # bump when what a checkpoint holds changes meaning: other formats are refused by name


def save_detector(detector: Detector, path: str | Path, run_config: dict[str, Any] | None = None) -> Path:
    """Write `detector` to `path` through a temporary name (a save cut short never leaves a `model.pt`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "package_version": __version__,
        "model": detector.name, "config": asdict(detector.config), "fingerprint": detector.fingerprint_,
        "feature_config": detector.feature_config_, "thresholds": detector.thresholds_,
        "history": detector.history_,
        "fit_config": detector.fit_config_.to_dict() if detector.fit_config_ is not None else None,
        "run_config": run_config, "state": detector._state(),
        "decision_scores": (None if detector.decision_scores_ is None else
                            {column: detector.decision_scores_[column].tolist()
                             for column in detector.decision_scores_.columns}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    digest_file, tmp = digest_path(path), path.with_name(f".{path.name}.partial")
    digest_tmp = digest_file.with_name(f".{digest_file.name}.partial")
    digest_tmp.write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")  # the `sha256sum -c` format
    tmp.write_bytes(data)
    # The digest first: a save cut short between the renames leaves a digest without its model (nothing
    # to load) or, over an older model, one that does not match it (refused by name); never a model
    # trusted without its digest.
    digest_tmp.replace(digest_file)
    tmp.replace(path)
    return path


def digest_path(path: str | Path) -> Path:
    """`model.pt.sha256` beside `model.pt`: the SHA-256 of the model file, checked on every load."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def _read_verified(path: Path, damaged: str) -> bytes:
    """The model file's bytes, after checking them against the digest saved beside them."""
    digest_file = digest_path(path)
    try:
        expected = digest_file.read_text(errors="replace").split()[0].lower() if digest_file.is_file() else None
    except (OSError, IndexError):
        expected = ""
    if expected is None:
        raise DamagedFile(damaged.format(f"no {digest_file.name} beside it: saved by another version of the "
                                         "project, or the digest was removed"))
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise DamagedFile(damaged.format(f"its bytes do not match the SHA-256 in {digest_file.name}"))
    return data


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents as saved (MissingModel / DamagedFile when it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise MissingModel(f"no model at {path}; train one first with `{MAIN_COMMAND} train`")
    damaged = (f"{path} is damaged or is not a model saved by this project ({{}}); retrain it with "
               f"`{MAIN_COMMAND} train` (it is never loaded with arbitrary pickled code)")
    data = _read_verified(path, damaged)
    try:  # only reading the file is guarded here: a failure in it means a damaged file, not a bug
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    if payload.get("format", FORMAT) != FORMAT:
        raise DamagedFile(damaged.format(f"checkpoint format {payload['format']!r}, saved by another version of "
                                         f"the project; this version reads format {FORMAT}"))
    try:
        cls = detector_class(payload["model"])
    except KeyError:
        raise DamagedFile(damaged.format(f"unknown model {payload['model']!r}; this version knows "
                                         f"{sorted(MODELS)}")) from None
    try:  # settings this version's model does not take: saved by another version
        cls.config_class(**payload["config"])
    except (TypeError, ValueError) as err:
        raise DamagedFile(damaged.format(f"its {payload['model']} settings are not this version's: {err}")) from None
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
