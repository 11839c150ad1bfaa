"""Networks trained on complementary folds, so that every training clip has a score from a network that
never saw it: the calibration of the learned detectors (SPEC §6, "clips held out of a network's training").

With ``K`` networks, the normal training clips are split into ``K`` folds (stratified by class, so every
class is spread over the folds) and network ``k`` learns from every fold but ``k``. A training clip of fold
``k`` is scored by network ``k`` exactly as a test clip is: unseen. Those out-of-fold raw scores give the
per-section, per-domain statistics (:class:`~asd.models.calibration.DomainCalibration`), and the test score
is the mean of the ``K`` networks' calibrated scores. Training ``K`` networks on ``(K - 1) / K`` of the
clips each costs ``K - 1`` networks on all of them: two networks cost one.

Averaging ``K`` correlated scores shrinks their spread, which would put the networks' mean below the
thresholds fitted on single out-of-fold scores (too few alarms). :class:`FoldCalibration` measures the
networks' correlation ``rho`` on the training clips and divides the mean by its spread,
``sqrt((1 + (K - 1) rho) / K)``, so test scores and out-of-fold scores share one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asd.models.calibration import DomainCalibration


def assign_folds(class_names: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. n_folds - 1) of each clip, stratified by class: each class's clips are dealt out in a
    random order, so a class of ten target clips gives every fold some."""
    class_names = np.asarray(class_names).astype(str)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(class_names), dtype=np.int64)
    offset = 0
    for name in sorted(set(class_names.tolist())):
        members = np.flatnonzero(class_names == name)
        folds[rng.permutation(members)] = (np.arange(len(members)) + offset) % n_folds
        offset += len(members)  # small classes start where the last left off: folds stay balanced
    return folds


@dataclass
class FoldCalibration:
    """Fitted state: the per-section, per-domain ``calibration`` and the ``spread`` of the networks' mean."""

    calibration: DomainCalibration
    spread: float = 1.0

    @classmethod
    def fit(cls, raw_by_network: list[np.ndarray], folds: np.ndarray, sections: np.ndarray, domains: np.ndarray,
            min_clips_for_sd: int = 20, relative_spread: bool = False) -> tuple[FoldCalibration, np.ndarray]:
        """From each network's raw scores ``[n, 2]`` of every training clip (out of fold for its own fold,
        in-sample for the others, which only the correlation uses): the fitted calibration and each clip's
        calibrated out-of-fold score ``[n]``."""
        rows = np.arange(len(folds))
        raw_oof = np.stack(raw_by_network)[folds, rows]  # each clip from the network that held it out
        calibration = DomainCalibration(min_clips_for_sd, relative_spread).fit(raw_oof, sections, domains)
        out_of_fold = calibration.transform(raw_oof, sections)
        pairs = []
        for k in range(len(raw_by_network)):
            held = folds == k
            for j, raw in enumerate(raw_by_network):
                if j == k:
                    continue
                seen = calibration.transform(raw[held], sections[held])
                usable = np.isfinite(seen) & np.isfinite(out_of_fold[held])
                if usable.sum() > 3 and np.std(seen[usable]) > 0 and np.std(out_of_fold[held][usable]) > 0:
                    pairs.append(np.corrcoef(seen[usable], out_of_fold[held][usable])[0, 1])
        n = len(raw_by_network)
        rho = float(np.clip(np.mean(pairs), 0.0, 1.0)) if pairs else 1.0
        return cls(calibration, float(np.sqrt((1 + (n - 1) * rho) / n))), out_of_fold

    def combine(self, raw_by_network: list[np.ndarray], sections: np.ndarray) -> np.ndarray:
        """Test score ``[n]``: the mean of the networks' calibrated scores, on the out-of-fold scale."""
        return np.mean([self.calibration.transform(raw, sections) for raw in raw_by_network], axis=0) / self.spread

    def state(self) -> dict:
        return {"calibration": self.calibration.state(), "spread": self.spread}

    @classmethod
    def from_state(cls, state: dict) -> FoldCalibration:
        return cls(DomainCalibration.from_state(state["calibration"]), float(state["spread"]))
