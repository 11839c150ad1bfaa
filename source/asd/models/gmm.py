"""A fast statistical detector: pooled log-mel and short-time spectra + Gaussian mixtures (TWFR-GMM family, SPEC §6).

No neural network; a DCASE-size machine type trains and scores in seconds on a CPU.

1. Features, one *view* of the clip per pooling: its log-mel pooled over time per mel band by global
   weighted ranking pooling (:mod:`asd.models.pooling`), once for every ``r`` in ``poolings`` (``r = 0``
   max ... ``r = 1`` mean); its short-time log power spectrum (32 ms frames 8 ms apart, from the cached
   waveform: :mod:`asd.models.short_spectrum`), once for every ``r`` in ``spectrum_poolings``.
2. Models: per view, section and training domain, a diagonal Gaussian mixture of the normal training
   clips; its number of components is chosen by BIC (from 1, 2, 4, ... up to ``max_components``, at most
   one component per ``min_clips_per_component`` clips), so a source domain that mixes several operating
   conditions gets several components while the ten target clips get one. Every mixture's variances are
   shrunk towards the machine type's within-group variance (all sections and domains, each around its own
   mean), so ten target clips, or five clips of one machine ID, do not estimate 128 variances alone.
3. Calibration (:mod:`asd.models.calibration`): per view, a clip's raw scores are its negative
   log-likelihoods under its section's source and target mixtures. Each domain's are standardised with the
   out-of-fold figures of that domain's own normal clips: source clips scored by mixtures refitted without
   their fold (k folds, stratified by section and domain), target clips by a target mixture refitted
   without them (leave-one-out; there are ten), both lowered by the measured cost of refitting on fewer
   clips (``fit_size_correction``). The ten target clips borrow the source spread, or keep their own
   where it is wider (``wider_own_spread``). The smallest z over the domains is the view's calibrated score, so a
   normal clip of either domain lands near zero whatever its domain (which DCASE evaluation names hide).
4. Combining the views without choosing one with test labels: each view's calibrated score becomes a
   surprise ``-log P(Z > z)`` under a standard normal (positive, so the DCASE gamma threshold applies), and
   the clip's score is the largest surprise over the views: a clip is as anomalous as its most anomalous
   view.

Fitted state: ``poolings_``, ``spectrum_poolings_``, ``spectrum_n_fft_``, ``models_`` (one
:class:`DiagonalGmm` per view x section x domain; the log-mel views first) and ``calibrations_`` (one
:class:`~asd.models.calibration.DomainCalibration` per view).
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
from asd.dataset.layout import DOMAINS
from asd.models.augment import points_between
from asd.models.base import Detector, FitConfig
from asd.models.calibration import DomainCalibration, domain_column, fit_size_gap, within_group_variance
from asd.models.fold_networks import assign_folds
from asd.models.pooling import pooled_features
from asd.models.short_spectrum import pooled_spectra


@dataclass(frozen=True)
class GmmDetectorConfig:
    """Settings of :class:`GmmDetector`; the same for every machine type (first-shot rule)."""

    poolings: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99, 1.0)  # GWRP r values, combined as described above
    # GWRP r values of the short-time spectrum views (() turns them off): its maximum over 8 ms steps
    # catches clicks and knocks (docs/quality.md, "Short-time spectrum view").
    spectrum_poolings: tuple[float, ...] = (0.0,)
    spectrum_n_fft: int = 512  # STFT frame of the spectrum views, in samples (hop: a quarter of it)
    max_components: int = 8
    min_clips_per_component: int = 4
    reg_covar: float = 1e-3  # added to every variance (dB² units)
    # Each component's variances are shrunk towards the machine type's within-group per-band variance as if
    # this many extra clips had shown it: a 3-clip target domain cannot estimate 128 variances on its own.
    prior_clips: float = 4.0
    folds: int = 5  # out-of-fold scoring of the source clips, for the calibration (target: leave-one-out)
    min_clips_for_sd: int = 20  # a domain with fewer out-of-fold scores borrows its section's largest spread
    # ... unless its own is wider: ten target clips' mixture scores new target clips less evenly than a
    # thousand clips' does source clips (docs/quality.md, "A small domain's own spread").
    wider_own_spread: bool = True
    # Synthetic target clips per real one, on segments between target clips (SMOTE-style), added before the
    # target mixture is fitted: the ten DCASE target clips then cover the space between them (measured by
    # bench_quality.py --variant; off by default).
    target_mixup: int = 0
    # Lower the out-of-fold scores by the gap between a refit's size and the full fit's, measured with one
    # more fold left out (see out_of_fold_nll): needed where a section has a handful of clips.
    fit_size_correction: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "poolings", tuple(float(r) for r in self.poolings))
        object.__setattr__(self, "spectrum_poolings", tuple(float(r) for r in self.spectrum_poolings))
        if self.target_mixup < 0:
            raise ValueError(f"target_mixup must be >= 0, got {self.target_mixup}")
        if not self.poolings or any(not 0.0 <= r <= 1.0 for r in self.poolings):
            raise ValueError(f"poolings must be r values in [0, 1], got {self.poolings}")
        if any(not 0.0 <= r <= 1.0 for r in self.spectrum_poolings):
            raise ValueError(f"spectrum_poolings must be r values in [0, 1], got {self.spectrum_poolings}")
        if self.spectrum_n_fft < 16:
            raise ValueError(f"spectrum_n_fft must be at least 16 samples, got {self.spectrum_n_fft}")
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


def pooled_group_variance(features: np.ndarray, sections: np.ndarray, domains: np.ndarray,
                          reg_covar: float) -> np.ndarray:
    """Per-band variance ``[d]`` of ``features [n, d]`` around each section x domain group's own mean,
    pooled over the groups (degrees of freedom: clips minus groups): what the machine type's normal clips
    vary by within one operating condition, estimated from all of them at once."""
    groups = np.char.add(np.asarray(sections).astype(str), "/" + np.asarray(domains).astype(str))
    return within_group_variance(features, groups) + reg_covar


def _fit_groups(features: np.ndarray, sections: np.ndarray, domains: np.ndarray, cfg: GmmDetectorConfig,
                seed: int, components: dict[tuple[str, str], int] | None = None, prior: np.ndarray | None = None
                ) -> dict[tuple[str, str], DiagonalGmm]:
    """One mixture per section x domain of ``features [n, d]`` (groups with fewer than 2 clips skipped).
    ``components`` fixes a group's number of components (the out-of-fold refits reuse the full fit's
    choice instead of searching again); ``prior`` replaces the variance every group's variances are shrunk
    towards (by default the within-group variance pooled over all the given clips; a refit of one domain
    alone passes the full set's)."""
    if prior is None:
        prior = pooled_group_variance(features, sections, domains, cfg.reg_covar)
    models = {}
    for section in np.unique(sections):
        for domain in np.unique(domains[sections == section]):
            chosen = (sections == section) & (domains == domain)
            key = (str(section), str(domain))
            if chosen.sum() < 2:
                continue
            x = features[chosen]
            if domain == "target" and cfg.target_mixup:
                x = np.concatenate([x, points_between(x, cfg.target_mixup, np.random.default_rng(seed))])
            if components is None:
                models[key] = DiagonalGmm.fit(x, cfg.max_components, cfg.min_clips_per_component,
                                              cfg.reg_covar, seed, 1, prior, cfg.prior_clips)
            else:
                k = components.get(key, 1)
                models[key] = DiagonalGmm.fit(x, k, cfg.min_clips_per_component, cfg.reg_covar,
                                              seed, k, prior, cfg.prior_clips)
    return models


def domain_nll(models: dict[tuple[str, str], DiagonalGmm], features: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Raw scores ``[n, 2]``: negative log-likelihood under the source and the target mixture of each clip's
    section (``inf`` where it has none); a section never trained is compared with every section's mixtures."""
    trained = {section for section, _ in models}
    out = np.full((len(features), len(DOMAINS)), np.inf)
    unseen = ~np.isin(sections, list(trained))
    for (section, domain), model in models.items():
        rows = (sections == section) | unseen
        if rows.any():
            j = DOMAINS.index(domain)
            out[rows, j] = np.minimum(out[rows, j], -model.log_likelihood(features[rows]))
    return out


def out_of_fold_nll(features: np.ndarray, sections: np.ndarray, domains: np.ndarray, cfg: GmmDetectorConfig,
                    seed: int, components: dict[tuple[str, str], int]) -> np.ndarray:
    """Each clip's negative log-likelihood under its own domain's mixture fitted *without it*: source clips
    by k-fold refits (``cfg.folds``), target clips leave-one-out (their mixture refitted on the section's
    other target clips; the source mixtures never saw them). NaN where nothing is left to fit on.

    A refit has fewer clips than the final mixture, so a held-out clip is scored by a slightly worse model
    than a test clip will be; on a five-clip section that gap is most of a standard deviation. With
    ``cfg.fit_size_correction`` each group's scores are lowered by the gap expected from one more fold
    left out (the refits are repeated without a second fold, or a second target clip), scaled to the
    full fit's size by the 1/size law of an estimate's excess error: see
    :func:`~asd.models.calibration.fit_size_gap`."""
    out = np.full(len(features), np.nan)
    smaller = np.full(len(features), np.nan)  # the same clips scored by refits that also lack one more fold
    source = domains == "source"
    groups = np.char.add(sections.astype(str), "/" + domains.astype(str))
    folds = assign_folds(groups, cfg.folds, seed)  # a five-clip section loses one clip per fold
    for fold in range(cfg.folds):
        held = source & (folds == fold)
        if not held.any():
            continue
        models = _fit_groups(features[~held], sections[~held], domains[~held], cfg, seed, components)
        out[held] = domain_nll(models, features[held], sections[held])[:, 0]
        if cfg.fit_size_correction:
            fewer = ~(held | (source & (folds == (fold + 1) % cfg.folds)))
            models = _fit_groups(features[fewer], sections[fewer], domains[fewer], cfg, seed, components)
            smaller[held] = domain_nll(models, features[held], sections[held])[:, 0]

    def target_nll(clip: int, fit_on: np.ndarray, prior: np.ndarray) -> float:
        """The clip's NLL under a target mixture of the ``fit_on`` clips (NaN with fewer than two)."""
        if len(fit_on) < 2:
            return np.nan
        models = _fit_groups(features[fit_on], sections[fit_on], domains[fit_on], cfg, seed, components, prior)
        return float(domain_nll(models, features[clip:clip + 1], sections[clip:clip + 1])[0, 1])

    for section in np.unique(sections[~source]):
        members = np.flatnonzero((sections == section) & ~source)
        for position, clip in enumerate(members):
            others = np.arange(len(features)) != clip
            prior = pooled_group_variance(features[others], sections[others], domains[others], cfg.reg_covar)
            out[clip] = target_nll(clip, members[members != clip], prior)
            if cfg.fit_size_correction:
                next_clip = members[(position + 1) % len(members)]
                smaller[clip] = target_nll(clip, members[(members != clip) & (members != next_clip)], prior)
    if cfg.fit_size_correction:
        for group in np.unique(groups):
            rows = groups == group
            n = rows.sum()
            held = n / min(cfg.folds, n) if source[rows][0] else 1.0  # per fold; leave-one-out for target
            out[rows] -= fit_size_gap(out[rows], smaller[rows], n, n - held, n - 2 * held)
    return out


class GmmDetector(Detector):
    """Pooled log-mel + Gaussian mixtures per section and domain, calibrated; see the module docstring."""

    name = "gmm"
    config_class = GmmDetectorConfig
    trains_network = False

    def __init__(self, config: GmmDetectorConfig = GmmDetectorConfig()) -> None:
        super().__init__(config)
        self.poolings_: tuple[float, ...] = ()
        self.spectrum_poolings_: tuple[float, ...] = ()
        self.spectrum_n_fft_ = 0
        self.models_: list[dict[tuple[str, str], DiagonalGmm]] = []  # one dict per view
        self.calibrations_: list[DomainCalibration] = []  # one per view

    def view_names(self) -> list[str]:
        """One name per view, in the order of ``models_``: ``log-mel r=0``, ..., ``spectrum r=0``, ..."""
        return [f"log-mel r={r:g}" for r in self.poolings_] + [f"spectrum r={r:g}" for r in self.spectrum_poolings_]

    def views(self, shard: Shard, clip_indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The clips' indices, sorted, and one feature matrix ``[n, d]`` per view, in that order."""
        clips, mels = pooled_features(shard, segment_rows_of(shard, clip_indices), self.poolings_)
        views = [mels[:, i] for i in range(len(self.poolings_))]
        if self.spectrum_poolings_:
            spectra = pooled_spectra(shard, clips, self.spectrum_n_fft_, self.spectrum_poolings_)
            views += [spectra[:, i] for i in range(len(self.spectrum_poolings_))]
        return clips, views

    # --- fitting -----------------------------------------------------------------------------------
    def _fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, device: torch.device,
             log) -> np.ndarray:
        cfg = self.config
        self.poolings_, self.spectrum_poolings_ = cfg.poolings, cfg.spectrum_poolings
        self.spectrum_n_fft_ = cfg.spectrum_n_fft
        clips, views = self.views(shard, train_clips)
        sections = shard.clips["section"].to_numpy().astype(str)[clips]
        domains = np.asarray(DOMAINS)[domain_column(shard.clips["domain"].to_numpy()[clips])]
        self.models_, self.calibrations_, calibrated = [], [], []
        for name, x in zip(self.view_names(), views, strict=True):
            models = _fit_groups(x, sections, domains, cfg, fit_config.seed)
            raw = domain_nll(models, x, sections)  # the other domain's mixture never saw the clip
            own = domain_column(domains)
            raw[np.arange(len(raw)), own] = out_of_fold_nll(x, sections, domains, cfg, fit_config.seed,
                                                            {key: m.n_components for key, m in models.items()})
            raw[np.isnan(raw)] = np.inf  # a domain of one clip: nothing to compare it with
            calibration = DomainCalibration(cfg.min_clips_for_sd, wider_own_spread=cfg.wider_own_spread)
            calibration.fit(raw, sections, domains)
            self.models_.append(models)
            self.calibrations_.append(calibration)
            calibrated.append(calibration.transform(raw, sections))
            log(f"{name}: components " + ", ".join(f"{s}/{d}={m.n_components}" for (s, d), m in models.items())
                + "; out-of-fold NLL " + ", ".join(f"{s}/{d}: {m:.1f} ± {sd:.1f} (n={n})"
                                                   for (s, d), (m, sd, n) in calibration.stats_.items()))
        return _largest_surprise(calibrated)

    # --- scoring -----------------------------------------------------------------------------------
    def score_views(self, views: list[np.ndarray], sections: np.ndarray) -> np.ndarray:
        """Anomaly score of clips from their views (one ``[n, d]`` per view, in the order of :meth:`view_names`)."""
        sections = np.asarray(sections).astype(str)
        return _largest_surprise([calibration.transform(domain_nll(models, x, sections), sections)
                                  for x, models, calibration in zip(views, self.models_, self.calibrations_,
                                                                    strict=True)])

    def _score(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        clips, views = self.views(shard, clip_indices)
        return self.score_views(views, shard.clips["section"].to_numpy().astype(str)[clips])

    # --- checkpoint --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "poolings": list(self.poolings_),
            "spectrum_poolings": list(self.spectrum_poolings_),
            "spectrum_n_fft": int(self.spectrum_n_fft_),
            "models": [[{"section": s, "domain": d, **m.state()} for (s, d), m in models.items()]
                       for models in self.models_],
            "calibrations": [calibration.state() for calibration in self.calibrations_],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.poolings_ = tuple(float(r) for r in state["poolings"])
        # checkpoints from before the spectrum views have none
        self.spectrum_poolings_ = tuple(float(r) for r in state.get("spectrum_poolings", ()))
        self.spectrum_n_fft_ = int(state.get("spectrum_n_fft", 0))
        self.models_ = [{(g["section"], g["domain"]): DiagonalGmm.from_state(g) for g in groups}
                        for groups in state["models"]]
        self.calibrations_ = [DomainCalibration.from_state(c) for c in state["calibrations"]]


def _largest_surprise(calibrated: list[np.ndarray]) -> np.ndarray:
    """The largest surprise ``-log P(Z > z)`` over the views' calibrated scores (each ``[n]``)."""
    return np.max(-scipy.stats.norm.logsf(np.stack(calibrated)), axis=0)
