"""The detector interface every model implements: fit, calibrated clip scores, the decision rule.

In the spirit of scikit-learn / pyod: `fit` learns from the normal training clips of a shard and leaves
`decision_scores_`, the score of every training clip *out of fold* (by models that never saw it); the clip
score is the primitive (`score_clips`, higher = more anomalous); `decisions` applies the thresholds the
engine fitted on `decision_scores_` (`score > threshold`: the clip's section and domain, else its section,
else the one pooled over sections). Every model calibrates its scores by construction
(:mod:`asd.models.calibration`): a normal clip scores about the same in every section and domain, so one
rule serves them all. Fitted state ends with an underscore. Saving and loading live in
`asd.models.checkpoint`; scoring a shard with another feature fingerprint is refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from asd.cache.shard import Shard
from asd.errors import AsdError
from asd.models.calibration import ALL_SECTIONS
from asd.models.device import resolve_device, seed_everything
from asd.models.registry import DEFAULT_THREADS, REDUCERS


class FingerprintMismatch(AsdError):
    """A model asked to score a shard whose features were computed with other settings."""


@dataclass(frozen=True)
class FitConfig:
    """How a model is fitted: the settings every model's `fit` reads (its own settings live in its config).

    The engine builds it once, from the command line, as part of the run configuration; it is saved in
    every checkpoint, so a loaded model knows how its clip scores were made.
    """

    epochs: int | None = None  # exactly this many epochs; None: stop early (below), at most max_epochs
    seed: int = 0
    device: str = "auto"
    aggregate: str = "mean"  # segment scores -> clip score (models that score segments: the autoencoders)
    # Early stopping (models that support it; `epochs` switches it off): stop when the held-out fold's loss
    # has not improved by `min_delta` (relative) for `patience` epochs, keep the best epoch's weights.
    max_epochs: int | None = None  # cap; None: the model's default epoch count
    patience: int = 5
    min_delta: float = 0.005
    # Training data: the log-mel blocks of the training and held-out clips are read once into memory
    # when they fit this budget (else streamed from the shard), stored as `cache_dtype`.
    memory_budget_mib: float = 512.0
    cache_dtype: str = "float32"
    threads: int = DEFAULT_THREADS  # torch intra-op threads; 0: every available core

    # The fields that only matter to models that train a network (the rest apply to every model).
    NETWORK_FIELDS: ClassVar[tuple[str, ...]] = ("epochs", "max_epochs", "patience", "min_delta",
                                                 "memory_budget_mib", "cache_dtype", "threads")

    def __post_init__(self) -> None:
        for name in ("epochs", "max_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.aggregate not in REDUCERS:
            raise ValueError(f"aggregate must be one of {REDUCERS}, not {self.aggregate!r}")
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

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON and `torch.load(weights_only=True)` friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> FitConfig:
        """Inverse of `to_dict`; keys of other settings (an older checkpoint's) are left out."""
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in known})


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


def threshold_key(section: str, domain: str | None = None) -> str:
    """The key of a threshold: `"00"` (a section), `"00/target"` (a section and domain), `"*"` (pooled)."""
    return str(section) if domain in (None, "", ALL_SECTIONS) else f"{section}/{domain}"


class Detector(ABC):
    """Base class: subclasses set `name` and `config_class`, hold a frozen `config`, and implement the
    abstract methods. `trains_network` says whether the network settings of `FitConfig` apply."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    trains_network: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.fingerprint_: str | None = None
        self.feature_config_: dict | None = None
        self.thresholds_: dict[str, dict] = {}  # fitted by the engine from decision_scores_
        self.history_: list[dict] = []
        self.fit_config_: FitConfig | None = None
        self.decision_scores_: pd.DataFrame | None = None  # file_name, section, domain, score (out of fold)

    # --- what a model implements -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, device: torch.device,
             log) -> np.ndarray:
        """Learn from the normal clips `train_clips` (sorted) of `shard`; return each of those clips'
        calibrated score *out of fold*: computed by models (or references) that never saw that clip."""

    @abstractmethod
    def _score(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        """Calibrated anomaly score of each clip of the sorted `clip_indices` (same order)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """Tensors and plain values that rebuild the fitted model (weights, banks, statistics)."""

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None:
        """Inverse of `_state`."""

    # --- shared behaviour --------------------------------------------------------------------------
    def fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, log=print) -> Detector:
        """Fit on a training shard's normal clips; records the shard's feature fingerprint, the fit
        settings and `decision_scores_` (the clips' out-of-fold scores, which the thresholds are fitted on)."""
        seed_everything(fit_config.seed)
        train_clips = np.sort(np.asarray(train_clips, dtype=np.int64))
        if not len(train_clips):
            raise ValueError("no training clips to fit on")
        self.fingerprint_ = shard.fingerprint
        self.feature_config_ = shard.feature_config.to_dict()
        self.fit_config_ = fit_config
        scores = self._fit(shard, train_clips, fit_config, resolve_device(fit_config.device), log)
        table = shard.clips.loc[train_clips]
        self.decision_scores_ = pd.DataFrame({
            "file_name": table["file_name"].to_numpy(), "section": table["section"].to_numpy().astype(str),
            "domain": table["domain"].to_numpy().astype(str), "score": np.asarray(scores, dtype=np.float64)})
        return self

    def learns_per_dataset(self, largest_training_set: int | None = None) -> bool:
        """True when the model learns once from every machine type of a dataset (``fit_shared``) before
        each machine type is fitted; its ``shared_`` then holds what was learned. A model may decide by
        the size of the dataset's largest training set (normal clips of one machine type)."""
        return hasattr(self, "fit_shared") and getattr(self.config, "scope", "machine") == "dataset"

    def applicable_fit_settings(self) -> tuple[str, ...]:
        """The `FitConfig` fields that change what this model learns (a run page lists only these)."""
        fields = tuple(FitConfig.__dataclass_fields__)
        return fields if self.trains_network else tuple(f for f in fields if f not in FitConfig.NETWORK_FIELDS)

    @property
    def reducer(self) -> str:
        """How this model's segment scores become clip scores (models that score segments): fixed at fit,
        since the calibration and the thresholds were fitted on clip scores made this way."""
        return self.fit_config_.aggregate if self.fit_config_ is not None else FitConfig.aggregate

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
    def score_clips(self, shard: Shard, clip_indices: np.ndarray | None = None, device: str = "auto") -> pd.Series:
        """Calibrated anomaly score per clip (index = clip index; higher = more anomalous)."""
        self.check_fingerprint(shard)
        clip_indices = shard.clips.index.to_numpy() if clip_indices is None else np.sort(clip_indices)
        scores = self._score(shard, np.asarray(clip_indices, dtype=np.int64), resolve_device(device))
        return pd.Series(np.asarray(scores, dtype=np.float64), index=clip_indices)

    def threshold_for(self, section: str, domain: str | None = None) -> float:
        """The decision threshold of a clip: its section and domain's, else its section's, else the one
        pooled over sections (`"*"`: a section never trained, or a name that tells none)."""
        for key in (threshold_key(section, domain), threshold_key(section), ALL_SECTIONS):
            if key in self.thresholds_:
                return float(self.thresholds_[key]["value"])
        raise RuntimeError("this detector has no thresholds yet (fit_thresholds sets them)")

    def decisions(self, scores: np.ndarray, sections: np.ndarray, domains: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(threshold, 0/1 decision) of each clip score: 1 (anomalous) where the score is strictly greater
        than its threshold, the DCASE rule. `domains` (from the file names; "unknown" for evaluation
        names) selects a section and domain threshold where one was fitted."""
        domains = [None] * len(sections) if domains is None else list(domains)
        thresholds = np.array([self.threshold_for(s, d) for s, d in zip(sections, domains, strict=True)],
                              dtype=np.float64)
        return thresholds, (np.asarray(scores, dtype=np.float64) > thresholds).astype(np.int64)
