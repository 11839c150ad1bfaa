"""Domain-aware nearest-neighbour references for clip embeddings, per section (SPEC §6).

A DCASE section has ~1,000 normal source clips and ~10 target clips. Each domain gets its own reference
bank, so that a thousand clips and ten clips weigh alike:

* **Source bank:** the k-means centroids of the section's source embeddings (``n_source_centroids``; the
  clips themselves when there are fewer).
* **Target bank:** every target clip.
* **Raw scores:** a clip's cosine distance to the nearest entry of each domain's bank, ``[n, 2]`` in the
  order of ``DOMAINS`` (``inf`` where the section has no bank of that domain). A section never seen in
  training is compared with the banks of all sections pooled (``"*"``).

The banks give *raw* distances; their scale differs between the domains (a target clip lies farther from
ten neighbours than a source clip from sixteen centroids). :mod:`asd.models.calibration` puts them on one
scale with distances of clips the banks were built without (`held_out`).

Two options for the ten target clips among a thousand (off by default; ``bench/bench_knn_variants.py``
measures them):

* ``target_mixup`` adds that many synthetic target entries per real one, each a random point on the
  segment between two target clips of the section (SMOTE-style), so the sparse bank covers the space
  between its clips.
* ``density_scaling`` divides the distance to each entry by that entry's local scale: its mean distance to
  its ``density_neighbours`` nearest training clips of its domain. A query near an entry of a loose
  region then counts as nearer than one at the same distance from an entry of a tight region.
"""

from __future__ import annotations

import numpy as np
import torch

from asd.models.augment import points_between
from asd.models.calibration import ALL_SECTIONS, DOMAINS
from asd.models.fold_networks import assign_folds


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_distance(queries: np.ndarray, bank: np.ndarray, scales: np.ndarray | None = None,
                     exclude_self: bool = False) -> np.ndarray:
    """Cosine distance of each unit-length query to its nearest unit-length bank row, one matrix product;
    with ``scales``, each row's distance divided by its scale first (``exclude_self``: queries are the bank
    itself, leave each one out). An empty bank gives ``inf``."""
    if not len(bank):
        return np.full(len(queries), np.inf)
    similarity = queries @ bank.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    if scales is None:
        return 1.0 - similarity.max(axis=1)
    return ((1.0 - similarity) / scales[None, :]).min(axis=1)


def source_bank(embeddings: np.ndarray, n_centroids: int, seed: int) -> np.ndarray:
    """The source bank: unit-length k-means centroids, or the clips themselves when there are few."""
    if len(embeddings) <= n_centroids:
        return _unit(embeddings)
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n_centroids, n_init=3, random_state=seed).fit(embeddings)
    return _unit(kmeans.cluster_centers_)


def interpolated_points(embeddings: np.ndarray, per_point: int, rng: np.random.Generator) -> np.ndarray:
    """``per_point * len(embeddings)`` unit-length points between two distinct rows (SMOTE-style)."""
    return _unit(points_between(np.asarray(embeddings, dtype=np.float32), per_point, rng))


def local_scales(bank: np.ndarray, clips: np.ndarray, neighbours: int) -> np.ndarray:
    """Each bank entry's mean cosine distance to its ``neighbours`` nearest clips (itself left out where
    the entry is a clip); 1 where there are too few clips to tell."""
    if len(clips) < 2:
        return np.ones(len(bank))
    distance = 1.0 - bank @ clips.T
    distance[distance < 1e-6] = np.inf  # the entry itself
    k = min(neighbours, max(1, int(np.isfinite(distance).sum(axis=1).min())))
    nearest = np.sort(distance, axis=1)[:, :k]
    scales = np.where(np.isfinite(nearest), nearest, np.nan)
    scales = np.nanmean(scales, axis=1)
    return np.maximum(np.nan_to_num(scales, nan=1.0), 1e-6)


class DomainBanks:
    """Fitted state: ``banks_`` (and ``scales_``, ones unless ``density_scaling``) keyed by
    ``(section, domain)``, section ``"*"`` pooling every section."""

    def __init__(self, n_source_centroids: int = 16, seed: int = 0, target_mixup: int = 0,
                 density_scaling: bool = False, density_neighbours: int = 5) -> None:
        if n_source_centroids < 1 or target_mixup < 0 or density_neighbours < 1:
            raise ValueError("need n_source_centroids >= 1, target_mixup >= 0, density_neighbours >= 1")
        self.n_source_centroids, self.seed = n_source_centroids, seed
        self.target_mixup, self.density_scaling, self.density_neighbours = target_mixup, density_scaling, \
            density_neighbours
        self.banks_: dict[tuple[str, str], np.ndarray] = {}
        self.scales_: dict[tuple[str, str], np.ndarray] = {}

    def _bank(self, embeddings: np.ndarray, domain: str) -> tuple[np.ndarray, np.ndarray]:
        if domain == "source":
            bank = source_bank(embeddings, self.n_source_centroids, self.seed)
        else:
            extra = interpolated_points(embeddings, self.target_mixup, np.random.default_rng(self.seed))
            bank = np.concatenate([_unit(embeddings), extra])
        scales = local_scales(bank, _unit(embeddings), self.density_neighbours) if self.density_scaling \
            else np.ones(len(bank))
        return bank, scales

    def _build(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray
               ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        banks = {}
        for section in [*sorted(set(sections.tolist())), ALL_SECTIONS]:
            in_section = np.ones(len(sections), bool) if section == ALL_SECTIONS else sections == section
            for domain in DOMAINS:
                mine = in_section & (domains == domain)
                if mine.any():
                    banks[(section, domain)] = self._bank(embeddings[mine], domain)
        return banks

    def fit(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> DomainBanks:
        """Build the banks from the unit-length embeddings of a machine type's normal training clips."""
        built = self._build(_unit(embeddings), np.asarray(sections).astype(str), _source_or_target(domains))
        self.banks_ = {key: bank for key, (bank, _) in built.items()}
        self.scales_ = {key: scales for key, (_, scales) in built.items()}
        return self

    @staticmethod
    def _distances(banks: dict, embeddings: np.ndarray, sections: np.ndarray) -> np.ndarray:
        known = {section for section, _ in banks}
        out = np.full((len(embeddings), len(DOMAINS)), np.inf)
        for section in set(sections.tolist()):
            rows = sections == section
            use = section if section in known else ALL_SECTIONS
            for j, domain in enumerate(DOMAINS):
                if (use, domain) in banks:
                    out[rows, j] = nearest_distance(embeddings[rows], *banks[(use, domain)])
        return out

    def distances(self, embeddings: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Raw scores ``[n, 2]``: cosine distance to the nearest entry of each domain's bank (divided by
        the entry's local scale with ``density_scaling``)."""
        if not self.banks_:
            raise RuntimeError("DomainBanks is not fitted")
        banks = {key: (bank, self.scales_[key]) for key, bank in self.banks_.items()}
        return self._distances(banks, _unit(embeddings), np.asarray(sections).astype(str))

    def held_out(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray,
                 held: np.ndarray, chunks: int = 10) -> np.ndarray:
        """Raw scores ``[held.sum(), 2]`` of the ``held`` training clips against banks that never held
        them, as a test clip's are. The held clips are dealt into up to ``chunks`` chunks, stratified by
        section and domain, and each chunk is scored against banks built from every other training clip:
        a bank then misses a tenth of its held clips at most (one of a section's ten target clips), so it is
        almost as full as the test clips' banks. (Banks without every held clip at once would be half as
        full with two fold networks, and on a section of five clips that alone made unseen test clips look
        far more normal than the held ones.)"""
        embeddings, sections = _unit(embeddings), np.asarray(sections).astype(str)
        domains, rows = _source_or_target(domains), np.flatnonzero(np.asarray(held, bool))
        groups = np.char.add(sections, "/" + domains)
        chunk_of = assign_folds(groups[rows], max(1, min(chunks, len(rows))), self.seed)
        out = np.empty((len(rows), len(DOMAINS)))
        for chunk in np.unique(chunk_of):
            mine = rows[chunk_of == chunk]
            keep = np.ones(len(embeddings), bool)
            keep[mine] = False
            banks = self._build(embeddings[keep], sections[keep], domains[keep])
            out[chunk_of == chunk] = self._distances(banks, embeddings[mine], sections[mine])
        return out

    def state(self) -> dict:
        """Tensors and plain values (a checkpoint loads them with ``weights_only=True``)."""
        keys = sorted(self.banks_)
        return {"keys": [[section, domain] for section, domain in keys],
                "banks": [torch.from_numpy(np.ascontiguousarray(self.banks_[k])) for k in keys],
                "scales": [torch.from_numpy(np.ascontiguousarray(self.scales_[k], dtype=np.float64)) for k in keys],
                "settings": [self.n_source_centroids, self.seed, self.target_mixup, int(self.density_scaling),
                             self.density_neighbours]}

    @classmethod
    def from_state(cls, state: dict) -> DomainBanks:
        # A checkpoint from before the target-bank options holds two settings and no scales: their defaults.
        n_centroids, seed, mixup, density, neighbours = [*(int(v) for v in state["settings"]), 0, 0, 5][:5]
        banks = cls(n_centroids, seed, mixup, bool(density), neighbours)
        keys = [(str(s), str(d)) for s, d in state["keys"]]
        banks.banks_ = {key: bank.numpy() for key, bank in zip(keys, state["banks"], strict=True)}
        scales = state.get("scales") or [torch.ones(len(bank), dtype=torch.float64) for bank in state["banks"]]
        banks.scales_ = {key: s.numpy() for key, s in zip(keys, scales, strict=True)}
        return banks


def _source_or_target(domains: np.ndarray) -> np.ndarray:
    """Domain names as the banks key them: anything but "target" is source (DCASE 2020 has no domains)."""
    return np.where(np.asarray(domains).astype(str) == "target", "target", "source")
