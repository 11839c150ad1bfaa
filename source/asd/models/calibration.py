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
DCASE target clips) keeps its own mean and borrows the spread of its section's largest domain; with
``relative_spread`` (distances, whose spread grows with their level) it borrows the ratio of spread to mean
and applies it to its own mean. With ``wider_own_spread`` it keeps its own spread where that is the wider
one (from five scores on): a model fitted on ten clips scores new clips less evenly than one fitted on a
thousand, and a borrowed spread then flags that domain's normal clips too often. Where every
domain of a section is that small (MIMII: five clips per machine ID), one odd clip would set the spread and
drag the mean: such a section takes its median and the spread of all sections' scores around their own
centres, pooled. A section never seen in training uses the figures pooled over all sections (``"*"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asd.dataset.layout import DOMAINS

ALL_SECTIONS = "*"  # statistics (and thresholds) pooled over sections: for sections never trained
MIN_SCORES_FOR_OWN_SPREAD = 5  # fewer scores say too little about their spread to widen a borrowed one


def domain_column(domains: np.ndarray) -> np.ndarray:
    """Column index in ``DOMAINS`` of each clip's domain (anything but "target" counts as source)."""
    return (np.asarray(domains).astype(str) == "target").astype(np.int64)


def fit_size_gap(scores: np.ndarray, scores_smaller: np.ndarray, n_full: float, n_refit: float,
                 n_smaller: float) -> float:
    """How much higher a group's held-out clips score than unseen clips will under the final model.

    Out-of-fold scores come from a model (or reference bank) built on ``n_refit`` of the group's ``n_full``
    clips, so they sit a little above a test clip's under the model built on all of them; on a five-clip
    section that gap is most of a standard deviation. ``scores_smaller`` are the same clips scored by
    models built on ``n_smaller`` clips (one more fold left out). If an estimate's excess error falls as
    1/size, the gap is the median step from ``n_smaller`` to ``n_refit`` (the median: log-likelihoods of
    models fitted on a few clips have heavy tails) times ``(1/n_refit - 1/n_full) / (1/n_smaller -
    1/n_refit)`` ((k-2)/k for k folds). Never negative; zero where it cannot be measured."""
    steps = np.asarray(scores_smaller, dtype=np.float64) - np.asarray(scores, dtype=np.float64)
    steps = steps[np.isfinite(steps)]
    if not len(steps) or not 0 < n_smaller < n_refit < n_full:
        return 0.0
    ratio = (1 / n_refit - 1 / n_full) / (1 / n_smaller - 1 / n_refit)
    return max(float(np.median(steps)) * ratio, 0.0)


def within_group_variance(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Variance of ``values`` (``[n]`` or ``[n, d]``, per column) around each group's own mean, pooled over
    the groups: what the values vary by within one group. Degrees of freedom: values minus groups (at
    least one, so values that are all alone in their groups give 0)."""
    values, groups = np.asarray(values, dtype=np.float64), np.asarray(groups)
    residuals = values.copy()
    names = np.unique(groups)
    for name in names:
        rows = groups == name
        residuals[rows] -= residuals[rows].mean(axis=0)
    return (residuals ** 2).sum(axis=0) / max(len(values) - len(names), 1)


@dataclass
class DomainCalibration:
    """Fitted state: ``stats_`` maps ``(section, domain)`` to ``(mean, sd, n)`` of out-of-fold raw scores."""

    min_clips_for_sd: int = 20
    # A borrowed spread keeps the lender's ratio of spread to mean (for positive scores such as distances:
    # ten target clips lie closer to their bank than source clips to theirs, and spread less in proportion).
    relative_spread: bool = False
    # A small domain keeps its own spread where it is wider than the borrowed one (see the module docstring).
    wider_own_spread: bool = False
    stats_: dict[tuple[str, str], tuple[float, float, int]] = field(default_factory=dict)

    def fit(self, raw_oof: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> DomainCalibration:
        """Learn the statistics from the out-of-fold raw scores ``[n, 2]`` of normal training clips: a clip
        contributes only its own domain's column."""
        raw_oof = np.asarray(raw_oof, dtype=np.float64)
        sections = np.asarray(sections).astype(str)
        own = raw_oof[np.arange(len(raw_oof)), domain_column(domains)]
        groups = {(section, domain): own[(sections == section) & (domain_column(domains) == j)]
                  for section in sorted(set(sections.tolist())) for j, domain in enumerate(DOMAINS)}
        groups = {key: v[np.isfinite(v)] for key, v in groups.items()}
        finite = np.isfinite(own)
        labels = np.char.add(sections, "/" + domain_column(domains).astype(str))[finite]
        # the spread within a section x domain, pooled over all of them (1.0 if no group has two scores)
        pooled_sd = float(np.sqrt(within_group_variance(own[finite], labels))) \
            if finite.sum() > len(np.unique(labels)) else 1.0
        self.stats_ = {}
        keys = [*sorted(set(sections.tolist())), ALL_SECTIONS] if len(raw_oof) else []
        for section in keys:
            if section == ALL_SECTIONS:
                values = {d: np.concatenate([v for (_, dd), v in groups.items() if dd == d]) for d in DOMAINS}
            else:
                values = {d: groups[(section, d)] for d in DOMAINS}
            richest = max(values.values(), key=len)
            for domain, v in values.items():
                if not len(v):
                    continue
                centre = float(np.mean(v))
                if len(v) >= self.min_clips_for_sd:
                    sd = float(np.std(v, ddof=1))
                elif len(richest) >= self.min_clips_for_sd:
                    sd = float(np.std(richest, ddof=1))  # e.g. ten target clips borrow the source spread
                    lender_mean = float(np.mean(richest))
                    if self.relative_spread and lender_mean > 0 and centre > 0:
                        sd *= centre / lender_mean
                    if self.wider_own_spread and len(v) >= MIN_SCORES_FOR_OWN_SPREAD:
                        sd = max(sd, float(np.std(v, ddof=1)))
                else:
                    # Every domain of the section is small (a few clips per machine ID): one odd clip would
                    # set its spread and drag its mean, so take the median and the spread pooled over sections.
                    centre, sd = float(np.median(v)), pooled_sd
                self.stats_[(section, domain)] = (centre, max(sd, 1e-9), int(len(v)))
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
        return {"min_clips_for_sd": self.min_clips_for_sd, "relative_spread": self.relative_spread,
                "wider_own_spread": self.wider_own_spread,
                "stats": [[s, d, *v] for (s, d), v in sorted(self.stats_.items())]}

    @classmethod
    def from_state(cls, state: dict) -> DomainCalibration:
        # checkpoints from before relative_spread (or wider_own_spread) borrowed the spread as it is
        calibration = cls(int(state["min_clips_for_sd"]), bool(state.get("relative_spread", False)),
                          bool(state.get("wider_own_spread", False)))
        calibration.stats_ = {(str(s), str(d)): (float(m), float(sd), int(n)) for s, d, m, sd, n in state["stats"]}
        return calibration

    def table(self) -> list[dict]:
        """One row per section and domain: the out-of-fold figures the scores are standardised with."""
        return [{"section": s, "domain": d, "oof_mean": m, "oof_sd": sd, "n_oof": n}
                for (s, d), (m, sd, n) in sorted(self.stats_.items())]
