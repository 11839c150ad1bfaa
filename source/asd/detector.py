"""The detector interface every model implements, clip aggregation, and checkpoint files.

In the spirit of scikit-learn / pyod: `fit` learns from normal training clips of a shard, `score_segments`
returns one anomaly score per segment (higher = more anomalous); fitted state ends with an underscore.
A checkpoint holds the model's config, weights, the feature fingerprint of the shard it was trained on,
and its thresholds; scoring a shard with another fingerprint is refused.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from asd.errors import AsdError, BadInput, DamagedFile, MissingModel
from asd.shard import Shard

REDUCERS = ("mean", "max", "median", "p90")


class FingerprintMismatch(AsdError):
    """A model asked to score a shard whose features were computed with other settings."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every model's training (the model's own settings live in its config)."""

    epochs: int | None = None  # None: the model's default
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1  # normal training clips held out (by clip) for thresholds and val loss
    aggregate: str = "mean"  # segment scores -> clip score
    threshold_method: str = "gamma"
    threshold_percentile: float = 90.0


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
    torch.use_deterministic_algorithms(True, warn_only=True)


def aggregate_clip_scores(segment_scores: np.ndarray, clip_of_segment: np.ndarray,
                          reducer: str = "mean") -> pd.Series:
    """Reduce segment scores to one score per clip (index = clip index)."""
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; choose from {REDUCERS}")
    frame = pd.DataFrame({"clip": clip_of_segment, "score": segment_scores})
    grouped = frame.groupby("clip", sort=True)["score"]
    if reducer == "p90":
        return grouped.quantile(0.9)
    return getattr(grouped, reducer)()


class Detector(ABC):
    """Base class: subclasses set `name`, hold a frozen `config`, and implement the abstract methods."""

    name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config
        self.fingerprint_: str | None = None
        self.feature_config_: dict | None = None
        self.thresholds_: dict[str, dict] = {}
        self.history_: list[dict] = []
        self.train_config_: dict | None = None

    # --- what a model implements -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, train: TrainConfig,
             device: torch.device, log) -> None:
        """Learn from the normal clips `train_clips` of `shard` (validation clips only for monitoring)."""

    @abstractmethod
    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        """One score per segment row (sorted rows in, same order out)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """Tensors and plain values that rebuild the fitted model (weights, banks, statistics)."""

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None:
        """Inverse of `_state`."""

    # --- shared behaviour --------------------------------------------------------------------------
    def fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, train: TrainConfig,
            log=print) -> Detector:
        """Fit on a training shard's normal clips; records the shard's feature fingerprint."""
        seed_everything(train.seed)
        self.fingerprint_ = shard.fingerprint
        self.feature_config_ = shard.feature_config.to_dict()
        self.train_config_ = asdict(train)
        self._fit(shard, train_clips, val_clips, train, resolve_device(train.device), log)
        return self

    def check_fingerprint(self, shard: Shard) -> None:
        if self.fingerprint_ is None:
            raise RuntimeError("this detector is not fitted yet")
        if shard.fingerprint != self.fingerprint_:
            raise FingerprintMismatch(
                f"{shard.path} has feature fingerprint {shard.fingerprint}, but the model was trained on "
                f"{self.fingerprint_}. Rebuild the cache with the model's settings "
                f"({self.feature_config_}) or retrain on this cache."
            )

    @torch.no_grad()
    def score_segments(self, shard: Shard, rows: np.ndarray, device: str = "auto") -> np.ndarray:
        """Anomaly score of every segment row of `shard` (higher = more anomalous)."""
        self.check_fingerprint(shard)
        return self._score_rows(shard, np.sort(rows), resolve_device(device))

    def score_clips(self, shard: Shard, clip_indices: np.ndarray | None = None, reducer: str = "mean",
                    device: str = "auto") -> pd.Series:
        """Anomaly score per clip (index = clip index), segment scores reduced with `reducer`."""
        from asd.data import segment_rows_of

        clips = shard.clips
        clip_indices = clips.index.to_numpy() if clip_indices is None else np.sort(clip_indices)
        rows = segment_rows_of(shard, clip_indices)
        scores = self.score_segments(shard, rows, device)
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        return aggregate_clip_scores(scores, clip_of_row, reducer)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (loadable with `torch.load(weights_only=True)`: tensors and plain values)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": self.name, "config": asdict(self.config), "fingerprint": self.fingerprint_,
            "feature_config": self.feature_config_, "thresholds": self.thresholds_,
            "history": self.history_, "train_config": self.train_config_, "state": self._state(),
        }
        tmp = path.with_name(f".{path.name}.partial")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path


def load_detector(path: str | Path) -> Detector:
    """Rebuild a fitted detector from its checkpoint (MissingModel / DamagedFile when it cannot)."""
    from asd.models.registry import MODELS, detector_class

    path = Path(path)
    if not path.is_file():
        raise MissingModel(f"no model at {path}; train one first with `python source/main.py train`")
    damaged = (f"{path} is damaged or is not a model saved by this project ({{}}); retrain it with "
               f"`python source/main.py train` (it is never loaded with arbitrary pickled code)")
    try:  # only reading the file is guarded here: a failure in it means a damaged file, not a bug
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - garbage bytes make the unpickler raise nearly anything
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:  # never pass on unsafe advice
            reason = "it holds objects other than tensors and plain values"
        raise DamagedFile(damaged.format(reason)) from None
    keys = ("model", "config", "fingerprint", "feature_config", "thresholds", "history", "train_config", "state")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise DamagedFile(damaged.format("not a checkpoint: expected keys " + ", ".join(keys)))
    try:
        cls = detector_class(payload["model"])
    except KeyError:
        raise DamagedFile(damaged.format(f"unknown model {payload['model']!r}; this version knows "
                                         f"{sorted(MODELS)}")) from None
    detector = cls(cls.config_class(**payload["config"]))
    detector.fingerprint_ = payload["fingerprint"]
    detector.feature_config_ = payload["feature_config"]
    detector.thresholds_ = payload["thresholds"]
    detector.history_ = payload["history"]
    detector.train_config_ = payload["train_config"]
    detector._load_state(payload["state"])
    return detector
