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
"""

from __future__ import annotations

import numpy as np
import torch

from asd.models.calibration import ALL_SECTIONS, DOMAINS


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_distance(queries: np.ndarray, bank: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Cosine distance of each unit-length query to its nearest unit-length bank row, one matrix product
    (``exclude_self``: queries are the bank itself, leave each one out). An empty bank gives ``inf``."""
    if not len(bank):
        return np.full(len(queries), np.inf)
    similarity = queries @ bank.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    return 1.0 - similarity.max(axis=1)


def source_bank(embeddings: np.ndarray, n_centroids: int, seed: int) -> np.ndarray:
    """The source bank: unit-length k-means centroids, or the clips themselves when there are few."""
    if len(embeddings) <= n_centroids:
        return _unit(embeddings)
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n_centroids, n_init=3, random_state=seed).fit(embeddings)
    return _unit(kmeans.cluster_centers_)


class DomainBanks:
    """Fitted state: ``banks_`` keyed by ``(section, domain)``, section ``"*"`` pooling every section."""

    def __init__(self, n_source_centroids: int = 16, seed: int = 0) -> None:
        if n_source_centroids < 1:
            raise ValueError(f"n_source_centroids must be >= 1, got {n_source_centroids}")
        self.n_source_centroids, self.seed = n_source_centroids, seed
        self.banks_: dict[tuple[str, str], np.ndarray] = {}

    def _bank(self, embeddings: np.ndarray, domain: str) -> np.ndarray:
        if domain == "source":
            return source_bank(embeddings, self.n_source_centroids, self.seed)
        return _unit(embeddings)

    def _build(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray
               ) -> dict[tuple[str, str], np.ndarray]:
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
        self.banks_ = self._build(_unit(embeddings), np.asarray(sections).astype(str),
                                  _source_or_target(domains))
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
                    out[rows, j] = nearest_distance(embeddings[rows], banks[(use, domain)])
        return out

    def distances(self, embeddings: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Raw scores ``[n, 2]``: cosine distance to the nearest entry of each domain's bank."""
        if not self.banks_:
            raise RuntimeError("DomainBanks is not fitted")
        return self._distances(self.banks_, _unit(embeddings), np.asarray(sections).astype(str))

    def held_out(self, embeddings: np.ndarray, sections: np.ndarray, domains: np.ndarray,
                 held: np.ndarray) -> np.ndarray:
        """Raw scores ``[held.sum(), 2]`` of the ``held`` training clips against banks built from the
        other training clips only: distances of clips the references never saw, as a test clip's are."""
        embeddings, sections = _unit(embeddings), np.asarray(sections).astype(str)
        domains, held = _source_or_target(domains), np.asarray(held, bool)
        banks = self._build(embeddings[~held], sections[~held], domains[~held])
        return self._distances(banks, embeddings[held], sections[held])

    def state(self) -> dict:
        """Tensors and plain values (a checkpoint loads them with ``weights_only=True``)."""
        keys = sorted(self.banks_)
        return {"keys": [[section, domain] for section, domain in keys],
                "banks": [torch.from_numpy(np.ascontiguousarray(self.banks_[k])) for k in keys],
                "settings": [self.n_source_centroids, self.seed]}

    @classmethod
    def from_state(cls, state: dict) -> DomainBanks:
        banks = cls(*[int(v) for v in state["settings"]])
        banks.banks_ = {(str(s), str(d)): bank.numpy() for (s, d), bank in zip(state["keys"], state["banks"],
                                                                                strict=True)}
        return banks


def _source_or_target(domains: np.ndarray) -> np.ndarray:
    """Domain names as the banks key them: anything but "target" is source (DCASE 2020 has no domains)."""
    return np.where(np.asarray(domains).astype(str) == "target", "target", "source")
