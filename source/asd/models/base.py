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

from asd.cache.shard import Shard
from asd.errors import AsdError, BadInput, DamagedFile, MissingModel

REDUCERS = ("mean", "max", "median", "p90")


class FingerprintMismatch(AsdError):
    """A model asked to score a shard whose features were computed with other settings."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every model's training (the model's own settings live in its config)."""

    epochs: int | None = None  # exactly this many epochs; None: stop early (below), at most max_epochs
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1  # normal training clips held out (by clip) for thresholds and val loss
    aggregate: str = "mean"  # segment scores -> clip score
    threshold_method: str = "gamma"
    threshold_percentile: float = 90.0
    # Early stopping (models that support it; `epochs` switches it off): stop when the held-out loss
    # has not improved by `min_delta` (relative) for `patience` epochs, keep the best epoch's weights.
    max_epochs: int | None = None  # cap; None: the model's default epoch count
    patience: int = 5
    min_delta: float = 0.005
    # Training data: the log-mel blocks of the training and held-out clips are read once into memory
    # when they fit this budget (else streamed from the shard), stored as `cache_dtype`.
    memory_budget_mib: float = 512.0
    cache_dtype: str = "float32"
    threads: int = 0  # torch intra-op threads; 0: every available core

    def __post_init__(self) -> None:
        for name in ("epochs", "max_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0.0 <= self.min_delta < 1.0:
            raise ValueError(f"min_delta is a relative tolerance in [0, 1), got {self.min_delta}")
        if self.memory_budget_mib < 0:
            raise ValueError(f"memory_budget_mib must be >= 0, got {self.memory_budget_mib}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be float32 or float16, got {self.cache_dtype!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: every core), got {self.threads}")

    def epoch_plan(self, model_default: int) -> tuple[int, bool]:
        """(most epochs to run, whether that number is fixed) for a model whose default is given."""
        if self.epochs is not None:
            return self.epochs, True
        return self.max_epochs or model_default, False


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


def reduce_selective(segment_scores: np.ndarray, clip_of_segment: np.ndarray, reducer: str = "mean") -> pd.Series:
    """Clip scores from `[n]` segment scores, or from `[n, k]` per-domain columns: each column reduced per
    clip with `reducer`, then the minimum over the columns (index = clip index)."""
    if segment_scores.ndim == 1:
        return aggregate_clip_scores(segment_scores, clip_of_segment, reducer)
    if segment_scores.ndim != 2 or segment_scores.shape[1] == 0:
        raise ValueError(f"segment scores must be [n] or [n, k], got shape {segment_scores.shape}")
    columns = [aggregate_clip_scores(segment_scores[:, j], clip_of_segment, reducer)
               for j in range(segment_scores.shape[1])]
    return pd.concat(columns, axis=1).min(axis=1)


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
        """One score per segment row (sorted rows in, same order out): `[n]`, or `[n, k]` with one column
        per reference domain, which `score_clips` reduces per clip before taking the minimum over columns."""

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
        """Anomaly score of every segment row of `shard` (higher = more anomalous): `[n]`, or `[n, k]`
        per-domain columns (see `_score_rows`)."""
        self.check_fingerprint(shard)
        return self._score_rows(shard, np.sort(rows), resolve_device(device))

    def score_clips(self, shard: Shard, clip_indices: np.ndarray | None = None, reducer: str = "mean",
                    device: str = "auto") -> pd.Series:
        """Anomaly score per clip (index = clip index), segment scores reduced with `reducer`.

        Per-domain segment scores `[n, k]` (selective scoring, e.g. the DCASE baseline's selective
        Mahalanobis) are reduced per clip column by column, then the clip takes the minimum over the
        domains: the official order, average per domain first and minimum last.
        """
        from asd.cache.reading import segment_rows_of

        clips = shard.clips
        clip_indices = clips.index.to_numpy() if clip_indices is None else np.sort(clip_indices)
        rows = segment_rows_of(shard, clip_indices)
        scores = self.score_segments(shard, rows, device)
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        return reduce_selective(scores, clip_of_row, reducer)

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
