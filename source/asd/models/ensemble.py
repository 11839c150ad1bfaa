"""An ensemble of named detectors whose clip scores are put on one scale, then combined (SPEC §6).

Each member is fitted on the same training clips. Its clip scores on the held-out normal clips give a
mean and a standard deviation per section; a test clip's member score is standardised with its section's
figures (z-score), and the members' z-scores are averaged (or their maximum taken). Standardising per
section *and domain* (``standardise_by="section-domain"``) uses the clip's domain where the file name gives
it and the held-out clips of that domain number at least ``min_clips``; it is not the default because
evaluation sets hide the domain of test clips, and a DCASE target domain leaves about one held-out clip.
Thresholds, outputs and metrics work as for any detector.

Fitted state: ``members_`` (fitted detectors) and ``standardisation_`` (per member: key -> (mean, sd)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from asd.cache.shard import Shard
from asd.models.base import ALL_SECTIONS, Detector, FitConfig

COMBINES = ("mean", "max")
STANDARDISE_BY = ("section", "section-domain")


@dataclass(frozen=True)
class EnsembleDetectorConfig:
    """Members by their `--model` names; how their standardised scores are combined."""

    members: tuple[str, ...] = ("gmm", "ae-maha")
    combine: str = "mean"
    standardise_by: str = "section"
    min_clips: int = 3  # fewer held-out clips than this for a key: use the broader key's figures

    def __post_init__(self) -> None:
        from asd.models.registry import MODELS

        object.__setattr__(self, "members", tuple(str(m) for m in self.members))
        unknown = [m for m in self.members if m not in MODELS or m == "ensemble"]
        if not self.members or unknown:
            raise ValueError(f"ensemble members must be model names other than 'ensemble' "
                             f"({sorted(set(MODELS) - {'ensemble'})}); got {list(self.members)}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, not {self.combine!r}")
        if self.standardise_by not in STANDARDISE_BY:
            raise ValueError(f"standardise_by must be one of {STANDARDISE_BY}, not {self.standardise_by!r}")


def standardisation_table(scores: np.ndarray, sections: np.ndarray, domains: np.ndarray,
                          by: str, min_clips: int) -> dict[str, tuple[float, float]]:
    """Mean and sd of normal clip scores: pooled (``"*"``), per section, and per ``section/domain`` when
    asked; keys with fewer than ``min_clips`` finite scores are left out (their clips use a broader key)."""
    def stats(values: np.ndarray) -> tuple[float, float] | None:
        values = values[np.isfinite(values)]
        if len(values) < max(2, min_clips):
            return None
        return float(values.mean()), float(max(values.std(ddof=1), 1e-12))

    table = {ALL_SECTIONS: stats(scores) or (float(np.nanmean(scores)) if len(scores) else 0.0, 1.0)}
    for section in np.unique(sections):
        in_section = sections == section
        if (found := stats(scores[in_section])) is not None:
            table[str(section)] = found
        if by == "section-domain":
            for domain in np.unique(domains[in_section]):
                if (found := stats(scores[in_section & (domains == domain)])) is not None:
                    table[f"{section}/{domain}"] = found
    return table


def standardise(scores: np.ndarray, sections: np.ndarray, domains: np.ndarray,
                table: dict[str, tuple[float, float]]) -> np.ndarray:
    """z-scores of clip scores, each with the most specific figures the table has for its clip."""
    out = np.empty(len(scores))
    for i, (score, section, domain) in enumerate(zip(scores, sections, domains, strict=True)):
        mean, sd = table.get(f"{section}/{domain}") or table.get(str(section)) or table[ALL_SECTIONS]
        out[i] = (score - mean) / sd
    return out


class EnsembleDetector(Detector):
    """Named member detectors, standardised on held-out normal clips, combined; see the module docstring."""

    name = "ensemble"
    config_class = EnsembleDetectorConfig

    def __init__(self, config: EnsembleDetectorConfig = EnsembleDetectorConfig()) -> None:
        super().__init__(config)
        self.members_: list[Detector] = []
        self.standardisation_: list[dict[str, tuple[float, float]]] = []

    def applicable_fit_settings(self) -> tuple[str, ...]:
        """Those of its members: the network settings apply as soon as one member trains a network."""
        from asd.models.registry import make_detector

        used = {name for member in self.config.members for name in make_detector(member).applicable_fit_settings()}
        return tuple(name for name in FitConfig.__dataclass_fields__ if name in used)

    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, fit_config: FitConfig,
             device: torch.device, log) -> None:
        from asd.models.registry import make_detector

        reference, what = (val_clips, "held-out normal clips") if len(val_clips) else \
            (train_clips, "training clips (none held out: --val-fraction 0)")
        clips = shard.clips
        sections = clips["section"].to_numpy().astype(str)[np.sort(reference)]
        domains = clips["domain"].to_numpy().astype(str)[np.sort(reference)]
        self.members_, self.standardisation_ = [], []
        for name in self.config.members:
            log(f"member {name}: fitting")
            member = make_detector(name).fit(shard, train_clips, val_clips, fit_config, log=log)
            scores = member.score_clips(shard, reference, fit_config.aggregate, fit_config.device).to_numpy()
            table = standardisation_table(scores, sections, domains, self.config.standardise_by,
                                          self.config.min_clips)
            log(f"member {name}: standardised on {len(reference)} {what}: "
                + ", ".join(f"{k}: {m:.4g} ± {s:.3g}" for k, (m, s) in table.items()))
            self.members_.append(member)
            self.standardisation_.append(table)
            self.history_ = self.history_ or list(member.history_)

    def _clip_scores(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> pd.Series:
        clips = shard.clips
        sections = clips["section"].to_numpy().astype(str)[clip_indices]
        domains = clips["domain"].to_numpy().astype(str)[clip_indices]
        columns = []
        for member, table in zip(self.members_, self.standardisation_, strict=True):
            scores = member.score_clips(shard, clip_indices, self.reducer, str(device)).to_numpy()
            columns.append(standardise(scores, sections, domains, table))
        combined = np.mean(columns, axis=0) if self.config.combine == "mean" else np.max(columns, axis=0)
        return pd.Series(combined, index=clip_indices)

    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        # Members reduce their own segments to clips; every segment then carries its clip's ensemble score,
        # so any reducer returns the clip score.
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        scores = self._clip_scores(shard, np.unique(clip_of_row), device)
        return scores.loc[clip_of_row].to_numpy()

    def _state(self) -> dict[str, Any]:
        return {"members": [{"model": m.name, "config": asdict(m.config), "state": m._state(),
                             "history": m.history_} for m in self.members_],
                "standardisation": [{k: [float(v) for v in ms] for k, ms in table.items()}
                                    for table in self.standardisation_]}

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
        self.standardisation_ = [{k: (ms[0], ms[1]) for k, ms in table.items()} for table in state["standardisation"]]
