"""Scores that mean the same in every section and domain: standardisation on out-of-fold normal clips.

A detector compares a clip with one reference per domain (the source model or bank, the target model or
bank) and gives one raw score per domain: ``raw [n_clips, 2]``, columns in the order of ``DOMAINS``
(``inf`` where a section has no reference of that domain; a model with a single reference repeats its
score in both columns). Raw scores of different domains and sections are on different scales: a sparse
target domain lies farther from its ten clips than a source clip does from a thousand.

:class:`DomainCalibration` learns, per section and domain, the mean and standard deviation of the raw
score of that domain's *own normal clips, scored by models that never saw them* (out-of-fold: the caller
cross-fits, k-fold for the source clips, leave-one-out for the few target clips, or networks that held
the clips out). A clip's calibrated score is the smallest z-score over the domains of its section: the
test clip's domain need not be known (DCASE evaluation data hides it), and a normal clip of either domain
lands near zero. Statistics from clips a model was fitted on would be biased low, and unseen normal
clips would then be flagged far too often.

A domain with too few out-of-fold scores for a trustworthy spread (``min_clips_for_sd``, e.g. the ten
DCASE target clips) keeps its own mean and borrows the spread of its section's largest domain; a section
never seen in training uses the figures pooled over all sections (``"*"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asd.dataset.layout import DOMAINS

ALL_SECTIONS = "*"  # statistics (and thresholds) pooled over sections: for sections never trained


def domain_column(domains: np.ndarray) -> np.ndarray:
    """Column index in ``DOMAINS`` of each clip's domain (anything but "target" counts as source)."""
    return (np.asarray(domains).astype(str) == "target").astype(np.int64)


@dataclass
class DomainCalibration:
    """Fitted state: ``stats_`` maps ``(section, domain)`` to ``(mean, sd, n)`` of out-of-fold raw scores."""

    min_clips_for_sd: int = 20
    stats_: dict[tuple[str, str], tuple[float, float, int]] = field(default_factory=dict)

    def fit(self, raw_oof: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> DomainCalibration:
        """Learn the statistics from the out-of-fold raw scores ``[n, 2]`` of normal training clips: a clip
        contributes only its own domain's column."""
        raw_oof = np.asarray(raw_oof, dtype=np.float64)
        sections = np.asarray(sections).astype(str)
        own = raw_oof[np.arange(len(raw_oof)), domain_column(domains)]
        self.stats_ = {}
        keys = [*sorted(set(sections.tolist())), ALL_SECTIONS] if len(raw_oof) else []
        for section in keys:
            in_section = np.ones(len(own), bool) if section == ALL_SECTIONS else sections == section
            values = {d: own[in_section & (domain_column(domains) == j)] for j, d in enumerate(DOMAINS)}
            values = {d: v[np.isfinite(v)] for d, v in values.items()}
            richest = max(values.values(), key=len)
            for domain, v in values.items():
                if not len(v):
                    continue
                spread_from = v if len(v) >= self.min_clips_for_sd or len(richest) < 2 else richest
                sd = float(np.std(spread_from, ddof=1)) if len(spread_from) >= 2 else 1.0
                self.stats_[(section, domain)] = (float(np.mean(v)), max(sd, 1e-9), int(len(v)))
        return self

    def transform(self, raw: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Calibrated score ``[n]``: the smallest z-score over the domains the clip's section knows."""
        if not self.stats_:
            raise RuntimeError("DomainCalibration is not fitted")
        raw = np.asarray(raw, dtype=np.float64)
        sections = np.asarray(sections).astype(str)
        known = {section for section, _ in self.stats_}
        out = np.full(len(raw), np.inf)
        for section in set(sections.tolist()):
            rows = sections == section
            use = section if section in known else ALL_SECTIONS
            for j, domain in enumerate(DOMAINS):
                if (use, domain) in self.stats_:
                    mean, sd, _ = self.stats_[(use, domain)]
                    out[rows] = np.minimum(out[rows], (raw[rows, j] - mean) / sd)
        return out

    def state(self) -> dict:
        """Plain values (a checkpoint loads them with ``weights_only=True``)."""
        return {"min_clips_for_sd": self.min_clips_for_sd,
                "stats": [[s, d, *v] for (s, d), v in sorted(self.stats_.items())]}

    @classmethod
    def from_state(cls, state: dict) -> DomainCalibration:
        calibration = cls(int(state["min_clips_for_sd"]))
        calibration.stats_ = {(str(s), str(d)): (float(m), float(sd), int(n)) for s, d, m, sd, n in state["stats"]}
        return calibration

    def table(self) -> list[dict]:
        """One row per section and domain: the out-of-fold figures the scores are standardised with."""
        return [{"section": s, "domain": d, "oof_mean": m, "oof_sd": sd, "n_oof": n}
                for (s, d), (m, sd, n) in sorted(self.stats_.items())]
