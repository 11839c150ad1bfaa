"""A fast statistical detector: pooled log-mel spectra + Gaussian mixtures (the TWFR-GMM family, SPEC §6).

No neural network; a DCASE-size machine type trains and scores in seconds on a CPU.

1. Features (:mod:`asd.models.pooling`): each clip's log-mel is pooled over time per mel band by global
   weighted ranking pooling, once for every ``r`` in ``poolings`` (``r = 0`` max ... ``r = 1`` mean).
2. Models: per ``r``, section and training domain, a diagonal Gaussian mixture of the normal training
   clips; its number of components is chosen by BIC (from 1, 2, 4, ... up to ``max_components``, at most
   one component per ``min_clips_per_component`` clips), so a source domain that mixes several operating
   conditions gets several components while the ten target clips get one.
3. Per ``r``, a clip's raw score is its negative log-likelihood under the *closest* domain of its section
   (the minimum over domains), so one threshold serves both domains without knowing a test clip's domain.
4. Combining the poolings without choosing one with test labels: each ``r``'s raw scores are standardised
   by the mean and standard deviation of *out-of-fold* scores of the normal training clips (k-fold by clip:
   every training clip is scored by models that never saw it), turned into a surprise
   ``-log P(Z > z)`` under a standard normal (positive, so the DCASE gamma threshold applies), and the clip's
   score is the largest surprise over ``r``: a clip is as anomalous as its most anomalous view.

Fitted state: ``poolings_``, ``models_`` (one :class:`DiagonalGmm` per r x section x domain) and
``standardisation_`` (out-of-fold mean and sd per r x section, plus ``"*"`` pooled over sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
import torch

from asd.cache.reading import segment_rows_of
from asd.cache.shard import Shard
from asd.models.base import ALL_SECTIONS, Detector, FitConfig
from asd.models.pooling import pooled_features


@dataclass(frozen=True)
class GmmDetectorConfig:
    """Settings of :class:`GmmDetector`; the same for every machine type (first-shot rule)."""

    poolings: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99, 1.0)  # GWRP r values, combined as described above
    max_components: int = 8
    min_clips_per_component: int = 4
    reg_covar: float = 1e-3  # added to every variance (dB² units)
    # Each component's variances are shrunk towards the section's pooled per-band variance as if this many
    # extra clips had shown it: a 3-clip target domain cannot estimate 128 variances on its own.
    prior_clips: float = 4.0
    folds: int = 5  # out-of-fold scoring of the training clips, for the standardisation

    def __post_init__(self) -> None:
        object.__setattr__(self, "poolings", tuple(float(r) for r in self.poolings))
        if not self.poolings or any(not 0.0 <= r <= 1.0 for r in self.poolings):
            raise ValueError(f"poolings must be r values in [0, 1], got {self.poolings}")
        if self.max_components < 1 or self.min_clips_per_component < 1 or self.folds < 2:
            raise ValueError("max_components and min_clips_per_component must be >= 1, folds >= 2")


class DiagonalGmm:
    """A fitted diagonal-covariance Gaussian mixture: ``weights_ [k]``, ``means_ [k, d]``,
    ``variances_ [k, d]``. Fitted with scikit-learn; evaluated here so a checkpoint needs only arrays."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> None:
        self.weights_ = np.asarray(weights, dtype=np.float64)
        self.means_ = np.asarray(means, dtype=np.float64)
        self.variances_ = np.asarray(variances, dtype=np.float64)

    @classmethod
    def fit(cls, x: np.ndarray, max_components: int, min_clips_per_component: int, reg_covar: float,
            seed: int, min_components: int = 1, prior_variances: np.ndarray | None = None,
            prior_clips: float = 0.0) -> DiagonalGmm:
        """The mixture with the lowest BIC among ``min_components`` x 1, 2, 4, ... components (each with
        enough clips; always at least one candidate). With ``prior_variances``, each component's variances
        are then shrunk towards them with the weight of ``prior_clips`` clips."""
        from sklearn.mixture import GaussianMixture

        best, best_bic, k = None, np.inf, max(1, min(min_components, len(x) // min_clips_per_component))
        while k <= max_components and (best is None or k * min_clips_per_component <= len(x)):
            mixture = GaussianMixture(k, covariance_type="diag", reg_covar=reg_covar, random_state=seed).fit(x)
            bic = mixture.bic(x)
            if bic < best_bic:
                best, best_bic = mixture, bic
            k *= 2
        variances = best.covariances_
        if prior_variances is not None and prior_clips > 0:
            counts = best.weights_[:, None] * len(x)
            variances = (counts * variances + prior_clips * prior_variances[None, :]) / (counts + prior_clips)
        return cls(best.weights_, best.means_, variances)

    @property
    def n_components(self) -> int:
        return len(self.weights_)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """Log density of each row of ``x [n, d]``."""
        x = np.asarray(x, dtype=np.float64)
        per_component = -0.5 * (
            np.log(2 * np.pi * self.variances_).sum(axis=1)[None, :]
            + (((x[:, None, :] - self.means_[None]) ** 2) / self.variances_[None]).sum(axis=2)
        )
        return scipy.special.logsumexp(per_component + np.log(self.weights_)[None, :], axis=1)

    def state(self) -> dict[str, torch.Tensor]:
        return {"weights": torch.from_numpy(self.weights_), "means": torch.from_numpy(self.means_),
                "variances": torch.from_numpy(self.variances_)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> DiagonalGmm:
        return cls(state["weights"].numpy(), state["means"].numpy(), state["variances"].numpy())


def _fit_groups(features: np.ndarray, sections: np.ndarray, domains: np.ndarray, cfg: GmmDetectorConfig,
                seed: int, components: dict[tuple[str, str], int] | None = None
                ) -> dict[tuple[str, str], DiagonalGmm]:
    """One mixture per section x domain of ``features [n, d]`` (groups with fewer than 2 clips skipped).
    ``components`` fixes a group's number of components (the out-of-fold refits reuse the full fit's
    choice instead of searching again)."""
    models = {}
    for section in np.unique(sections):
        prior = features[sections == section].var(axis=0) + cfg.reg_covar
        for domain in np.unique(domains[sections == section]):
            chosen = (sections == section) & (domains == domain)
            key = (str(section), str(domain))
            if chosen.sum() < 2:
                continue
            if components is None:
                models[key] = DiagonalGmm.fit(features[chosen], cfg.max_components, cfg.min_clips_per_component,
                                              cfg.reg_covar, seed, 1, prior, cfg.prior_clips)
            else:
                k = components.get(key, 1)
                models[key] = DiagonalGmm.fit(features[chosen], k, cfg.min_clips_per_component, cfg.reg_covar,
                                              seed, k, prior, cfg.prior_clips)
    return models


def _closest_domain_nll(models: dict[tuple[str, str], DiagonalGmm], features: np.ndarray,
                        sections: np.ndarray) -> np.ndarray:
    """Negative log-likelihood under the best-fitting domain model of each clip's section (any section's
    models when the clip's section was never trained)."""
    trained = {section for section, _ in models}
    scores = np.full(len(features), np.inf)
    for (section, _), model in models.items():
        applies = (sections == section) | ~np.isin(sections, list(trained))
        if applies.any():
            scores[applies] = np.minimum(scores[applies], -model.log_likelihood(features[applies]))
    return scores


class GmmDetector(Detector):
    """Pooled log-mel + Gaussian mixtures per section and domain; see the module docstring."""

    name = "gmm"
    config_class = GmmDetectorConfig
    trains_network = False

    def __init__(self, config: GmmDetectorConfig = GmmDetectorConfig()) -> None:
        super().__init__(config)
        self.poolings_: tuple[float, ...] = ()
        self.models_: list[dict[tuple[str, str], DiagonalGmm]] = []  # one dict per pooling
        self.standardisation_: list[dict[str, tuple[float, float]]] = []  # per pooling: section -> (mean, sd)

    # --- fitting -----------------------------------------------------------------------------------
    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, fit_config: FitConfig,
             device: torch.device, log) -> None:
        cfg = self.config
        clips, features = pooled_features(shard, segment_rows_of(shard, train_clips), cfg.poolings)
        sections = shard.clips["section"].to_numpy().astype(str)[clips]
        domains = shard.clips["domain"].to_numpy().astype(str)[clips]
        folds = np.random.default_rng(fit_config.seed).permutation(len(clips)) % cfg.folds
        self.poolings_ = cfg.poolings
        self.models_, self.standardisation_ = [], []
        for i, r in enumerate(cfg.poolings):
            x = features[:, i]
            models = _fit_groups(x, sections, domains, cfg, fit_config.seed)
            out_of_fold = np.full(len(clips), np.nan)
            for fold in range(cfg.folds):
                held = folds == fold
                fold_models = _fit_groups(x[~held], sections[~held], domains[~held], cfg, fit_config.seed,
                                          {key: m.n_components for key, m in models.items()})
                if held.any() and fold_models:
                    out_of_fold[held] = _closest_domain_nll(fold_models, x[held], sections[held])
            self.models_.append(models)
            self.standardisation_.append(_standardisation(out_of_fold, sections))
            log(f"r={r:g}: components " + ", ".join(f"{s}/{d}={m.n_components}" for (s, d), m in models.items())
                + "; out-of-fold NLL " + ", ".join(f"{s}: {m:.1f} ± {sd:.1f}"
                                                   for s, (m, sd) in self.standardisation_[-1].items()))

    # --- scoring -----------------------------------------------------------------------------------
    def score_features(self, features: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Anomaly score of clips from their pooled features ``[n, len(poolings), n_mels]``."""
        surprises = []
        for i, models in enumerate(self.models_):
            nll = _closest_domain_nll(models, features[:, i], sections)
            stats = self.standardisation_[i]
            mean, sd = np.array([stats.get(s, stats[ALL_SECTIONS]) for s in sections]).reshape(-1, 2).T
            surprises.append(-scipy.stats.norm.logsf((nll - mean) / sd))
        return np.max(np.stack(surprises), axis=0)

    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        # A clip-level model: every segment gets its clip's score, so any reducer returns the clip score.
        clips, features = pooled_features(shard, rows, self.poolings_)
        sections = shard.clips["section"].to_numpy().astype(str)[clips]
        clip_scores = dict(zip(clips.tolist(), self.score_features(features, sections), strict=True))
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        return np.array([clip_scores[c] for c in clip_of_row])

    # --- checkpoint --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "poolings": list(self.poolings_),
            "models": [[{"section": s, "domain": d, **m.state()} for (s, d), m in models.items()]
                       for models in self.models_],
            "standardisation": [{s: [float(v) for v in ms] for s, ms in stats.items()}
                                for stats in self.standardisation_],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.poolings_ = tuple(float(r) for r in state["poolings"])
        self.models_ = [{(g["section"], g["domain"]): DiagonalGmm.from_state(g) for g in groups}
                        for groups in state["models"]]
        self.standardisation_ = [{s: (ms[0], ms[1]) for s, ms in stats.items()} for stats in state["standardisation"]]


def _standardisation(out_of_fold: np.ndarray, sections: np.ndarray, min_clips: int = 4) -> dict[str, tuple]:
    """Mean and sd of out-of-fold scores per section (sections with too few clips use the pooled ones)."""
    def stats(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return 0.0, 1.0
        return float(values.mean()), float(max(values.std(ddof=1), 1e-6))

    out = {ALL_SECTIONS: stats(out_of_fold)}
    for section in np.unique(sections):
        values = out_of_fold[sections == section]
        if np.isfinite(values).sum() >= min_clips:
            out[str(section)] = stats(values)
    return out
