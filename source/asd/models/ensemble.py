"""An ensemble of named detectors whose calibrated clip scores are put on one scale, then combined (SPEC §6).

Each member is fitted on the same training clips and is calibrated by construction: its
``decision_scores_`` are the out-of-fold scores of those clips, on the same scale in every section and
domain. Members' scales differ (``gmm`` gives surprises, the networks z-scores), so each member's scores
are standardised once more with the mean and sd of its own out-of-fold scores, and the members' results
are averaged (or their maximum taken). The ensemble's out-of-fold scores are the same combination of the
members' out-of-fold scores, so thresholds fitted on them hold for test clips.

With ``later_members_min_clips``, the members after the first join only machine types with that many
normal training clips; a smaller machine type is scored by the first member alone, with its own scores
(so its thresholds and decisions are that member's). Members that learn once per dataset (``embed``,
``twobranch``) do so through the ensemble's ``fit_shared``.

Fitted state: ``members_`` (fitted detectors) and ``scales_`` (per member: mean, sd of its out-of-fold scores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from asd.cache.shard import Shard
from asd.models.base import Detector, FitConfig

COMBINES = ("mean", "max")


@dataclass(frozen=True)
class EnsembleDetectorConfig:
    """Members by their `--model` names; how their standardised scores are combined."""

    # gmm + embed scores best of the measured pairs, on the real sets and at DCASE size (docs/quality.md)
    members: tuple[str, ...] = ("gmm", "embed")
    combine: str = "mean"
    # Members after the first join a machine type only from this many normal training clips (0: always).
    # `auto` (asd.models.registry) adds `embed` to `gmm` at DCASE size, where it helps, and not on small
    # sets, where it hurts (docs/quality.md, "Size-aware default").
    later_members_min_clips: int = 0

    def __post_init__(self) -> None:
        from asd.models.registry import MODELS

        object.__setattr__(self, "members", tuple(str(m) for m in self.members))
        ensembles = {name for name, (_, cls, _) in MODELS.items() if cls == "EnsembleDetector"}
        unknown = [m for m in self.members if m not in MODELS or m in ensembles]
        if not self.members or unknown:
            raise ValueError(f"ensemble members must be model names other than {sorted(ensembles)} "
                             f"({sorted(set(MODELS) - ensembles)}); got {list(self.members)}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, not {self.combine!r}")
        if self.later_members_min_clips < 0:
            raise ValueError(f"later_members_min_clips must be >= 0, got {self.later_members_min_clips}")

    def members_for(self, n_clips: int) -> tuple[str, ...]:
        """The members that fit a machine type with ``n_clips`` normal training clips."""
        return self.members if n_clips >= self.later_members_min_clips else self.members[:1]


def out_of_fold_scale(scores: np.ndarray) -> tuple[float, float]:
    """Mean and sd of a member's finite out-of-fold scores ((0, 1) when there are too few)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < 2:
        return 0.0, 1.0
    return float(scores.mean()), float(max(scores.std(ddof=1), 1e-12))


class EnsembleDetector(Detector):
    """Named calibrated member detectors, put on one scale and combined; see the module docstring."""

    name = "ensemble"
    config_class = EnsembleDetectorConfig

    def __init__(self, config: EnsembleDetectorConfig = EnsembleDetectorConfig()) -> None:
        super().__init__(config)
        self.members_: list[Detector] = []
        self.scales_: list[tuple[float, float]] = []
        self.shared_: dict[str, Any] | None = None  # per member name: what it learned for the whole dataset

    def learns_per_dataset(self, largest_training_set: int | None = None) -> bool:
        from asd.models.registry import make_detector

        names = self.config.members if largest_training_set is None else \
            self.config.members_for(largest_training_set)
        return any(make_detector(name).learns_per_dataset() for name in names)

    def fit_shared(self, parts: list, fit_config: FitConfig, log=print, aux_parts: list = ()) -> dict[str, Any]:
        """Each member that learns per dataset does so once (see `Detector.learns_per_dataset`); a later
        member only when some machine type of the dataset has the clips to use it."""
        from asd.models.registry import make_detector

        largest = max((len(clips) for _, _, clips in parts), default=0)
        shared = {}
        for name in self.config.members_for(largest):
            member = make_detector(name)
            if member.learns_per_dataset():
                log(f"member {name}: learning from the whole dataset")
                shared[name] = member.fit_shared(parts, fit_config, log, aux_parts=aux_parts)
        return shared

    def applicable_fit_settings(self) -> tuple[str, ...]:
        """Those of its members: the network settings apply as soon as one member trains a network."""
        from asd.models.registry import make_detector

        used = {name for member in self.config.members for name in make_detector(member).applicable_fit_settings()}
        return tuple(name for name in FitConfig.__dataclass_fields__ if name in used)

    def _combine(self, columns: list[np.ndarray]) -> np.ndarray:
        standardised = [(np.asarray(c, dtype=np.float64) - mean) / sd
                        for c, (mean, sd) in zip(columns, self.scales_, strict=True)]
        return np.mean(standardised, axis=0) if self.config.combine == "mean" else np.max(standardised, axis=0)

    def _fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, device: torch.device,
             log) -> np.ndarray:
        from asd.models.registry import make_detector

        names = self.config.members_for(len(train_clips))
        if len(names) < len(self.config.members):
            later = self.config.members[len(names):]
            log(f"{len(train_clips)} training clips: {', '.join(later)} join{'s' if len(later) == 1 else ''} "
                f"from {self.config.later_members_min_clips}; {names[0]} alone")
        members = []
        for name in names:
            log(f"member {name}: fitting")
            member = make_detector(name)
            if self.shared_ and name in self.shared_:
                member.shared_ = self.shared_[name]
            members.append(member.fit(shard, train_clips, fit_config, log=log))
        return self.adopt(members, log)

    def adopt(self, members: list[Detector], log=print) -> np.ndarray:
        """Take fitted members (on the same training clips) and put them on one scale; returns the
        ensemble's out-of-fold scores. `_fit` ends here; bench/bench_combine_runs.py starts here."""
        self.members_, self.scales_ = list(members), []
        for member in self.members_:
            self.scales_.append(out_of_fold_scale(member.decision_scores_["score"].to_numpy()))
            log(f"member {member.name}: out-of-fold scores {self.scales_[-1][0]:.4g} ± {self.scales_[-1][1]:.3g}")
            self.history_ = self.history_ or list(member.history_)
        if len(self.members_) == 1:
            self.scales_ = [(0.0, 1.0)]  # one member: its own scores, so its thresholds and decisions too
        return self._combine([m.decision_scores_["score"].to_numpy() for m in self.members_])

    def _score(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        return self._combine([member.score_clips(shard, clip_indices, str(device)).to_numpy()
                              for member in self.members_])

    def _state(self) -> dict[str, Any]:
        return {"members": [{"model": m.name, "config": asdict(m.config), "state": m._state(),
                             "history": m.history_} for m in self.members_],
                "scales": [[float(v) for v in scale] for scale in self.scales_]}

    def _load_state(self, state: dict[str, Any]) -> None:
        from asd.models.registry import detector_class

        self.members_ = []
        for saved in state["members"]:
            cls = detector_class(saved["model"])
            member = cls(cls.config_class(**saved["config"]))
            member.fingerprint_, member.feature_config_ = self.fingerprint_, self.feature_config_
            member.fit_config_, member.history_ = self.fit_config_, saved["history"]
            member._load_state(saved["state"])
            self.members_.append(member)
        self.scales_ = [(float(m), float(s)) for m, s in state["scales"]]
