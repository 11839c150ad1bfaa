"""Domain-aware nearest-neighbour scoring of clip embeddings, per section.

A DCASE section has ~1,000 normal source clips and ~10 target clips. Raw nearest-neighbour distances to
those two banks are not on one scale: a clip of the sparse target domain lies farther from its neighbours
than a source clip does, so a single threshold would flag normal target clips. Here:

* **Banks.** The source bank is the k-means centroids of the source clips' embeddings (``n_source_centroids``;
  all clips when there are fewer), so that a thousand clips and ten clips weigh alike; every target clip
  is kept.
* **Distances.** Cosine distance to the nearest bank entry.
* **One scale.** Each domain's distances are standardised by the distances of its *own normal clips
  held out from its bank*: source clips by k-fold (the centroids refitted without the fold), target clips
  leave-one-out. A domain with too few clips for a standard deviation borrows the section's other one.
* **Score.** The minimum over the section's domains of the standardised distance, so the test clip's
  domain need not be known (DCASE 2022+ evaluation data hides it).

A section never seen in training is scored against all training clips pooled (section ``"*"``).
"""

from __future__ import annotations

import numpy as np
import torch

from asd.dataset.layout import DOMAINS
from asd.models.base import ALL_SECTIONS


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_distance(queries: np.ndarray, bank: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Cosine distance of each unit-length query to its nearest unit-length bank row, one matrix product
    (``exclude_self``: queries are the bank itself, leave each one out)."""
    similarity = queries @ bank.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    return 1.0 - similarity.max(axis=1)


def source_bank(embeddings: np.ndarray, n_centroids: int, seed: int) -> np.ndarray:
    """The source bank: unit-length k-means centroids, or the clips themselves when there are few."""
    if len(embeddings) <= n_centroids:
        return embeddings
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n_centroids, n_init=3, random_state=seed).fit(embeddings)
    return _unit(kmeans.cluster_centers_)


class DomainKnn:
    """Fitted state: ``banks_`` and ``stats_`` (mean, sd of held-out normal distances), both keyed by
    ``(section, domain)``."""

    def __init__(self, n_source_centroids: int = 16, folds: int = 5, min_clips_for_sd: int = 5,
                 seed: int = 0) -> None:
        if n_source_centroids < 1 or folds < 2 or min_clips_for_sd < 2:
            raise ValueError("need n_source_centroids >= 1, folds >= 2, min_clips_for_sd >= 2")
        self.n_source_centroids, self.folds, self.min_clips_for_sd = n_source_centroids, folds, min_clips_for_sd
        self.seed = seed
        self.banks_: dict[tuple[str, str], np.ndarray] = {}
        self.stats_: dict[tuple[str, str], tuple[float, float]] = {}

    def _held_out(self, embeddings: np.ndarray, domain: str) -> np.ndarray:
        """Distances of a domain's normal clips to a bank built without them."""
        n = len(embeddings)
        if n < 2:
            return np.zeros(0)
        if domain == "target" or n <= self.n_source_centroids:  # every clip is in the bank: leave one out
            return nearest_distance(embeddings, embeddings, exclude_self=True)
        fold_of = np.random.default_rng(self.seed).permutation(n) % self.folds
        out = np.empty(n)
        for fold in range(self.folds):
            rest = fold_of != fold
            bank = source_bank(embeddings[rest], self.n_source_centroids, self.seed)
            out[~rest] = nearest_distance(embeddings[~rest], bank)
        return out

    def _fit_section(self, section: str, embeddings: np.ndarray, domains: np.ndarray) -> None:
        held_out: dict[str, np.ndarray] = {}
        for domain in DOMAINS:
            mine = embeddings[domains == domain]
            if not len(mine):
                continue
            self.banks_[(str(section), domain)] = (source_bank(mine, self.n_source_centroids, self.seed)
                                              if domain == "source" else mine)
            held_out[domain] = self._held_out(mine, domain)
        pooled = np.concatenate(list(held_out.values()))
        for domain, values in held_out.items():
            # A domain with no held-out distance (a single clip) takes the section's pooled figures; one
            # with too few for a spread takes the spread of the largest domain.
            mean = float(values.mean()) if len(values) else float(pooled.mean()) if len(pooled) else 0.0
            richest = max(held_out.values(), key=len)
            spread_from = values if len(values) >= self.min_clips_for_sd else richest
            sd = float(spread_from.std(ddof=1)) if len(spread_from) >= 2 else 1.0
            self.stats_[(section, domain)] = (mean, max(sd, 1e-6))

    def fit(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> DomainKnn:
        """Build the banks and the standardisation from normal training clips' embeddings ``[n, D]``."""
        embeddings = _unit(embeddings)
        sections = np.asarray(sections).astype(str)
        domains = np.where(np.asarray(domains).astype(str) == "target", "target", "source")
        if not len(embeddings):
            raise ValueError("no embeddings to fit")
        for section in sorted(set(sections)):
            mask = sections == section
            self._fit_section(section, embeddings[mask], domains[mask])
        if len(set(sections)) > 1:
            self._fit_section(ALL_SECTIONS, embeddings, domains)
        return self

    def _sections(self) -> list[str]:
        return sorted({section for section, _ in self.banks_})

    def score(self, embeddings: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Standardised distance ``[n]`` (higher = more anomalous), minimum over the section's domains."""
        if not self.banks_:
            raise RuntimeError("DomainKnn is not fitted")
        embeddings = _unit(embeddings)
        sections = np.asarray(sections).astype(str)
        known = self._sections()
        fallback = ALL_SECTIONS if ALL_SECTIONS in known else known[0]
        out = np.empty(len(embeddings))
        for section in set(sections.tolist()):
            mask = sections == section
            use = section if section in known else fallback
            per_domain = [(nearest_distance(embeddings[mask], self.banks_[(use, d)]) - self.stats_[(use, d)][0])
                          / self.stats_[(use, d)][1] for d in DOMAINS if (use, d) in self.banks_]
            out[mask] = np.min(per_domain, axis=0)
        return out

    def state(self) -> dict:
        """Tensors and plain values (a checkpoint loads them with ``weights_only=True``)."""
        keys = sorted(self.banks_)
        return {"keys": [[str(section), str(domain)] for section, domain in keys],
                "banks": [torch.from_numpy(self.banks_[k]) for k in keys],
                "stats": torch.tensor([self.stats_[k] for k in keys], dtype=torch.float64),
                "settings": [self.n_source_centroids, self.folds, self.min_clips_for_sd, self.seed]}

    @classmethod
    def from_state(cls, state: dict) -> DomainKnn:
        knn = cls(*[int(v) for v in state["settings"]])
        for key, bank, (mean, sd) in zip(state["keys"], state["banks"], state["stats"].tolist(), strict=True):
            knn.banks_[tuple(key)] = bank.numpy()
            knn.stats_[tuple(key)] = (mean, sd)
        return knn
