"""Nearest-neighbour cosine scoring of embeddings against source and target banks of normal data.

The anomaly score of a query embedding is the cosine distance ``1 - cos`` to its ``k`` nearest normal
training embeddings (mean over the ``k``), computed against the source bank and the target bank
separately, then combined:

* ``"min"``: the minimum of the two domain distances (the usual DCASE 2022+ recipe).
* ``"normalized"``: each domain's distances are first divided by that domain's *density scale* and then
  the minimum is taken. The density scale of a bank is the mean, over (up to ``max_density_points``
  sampled) bank points, of their own leave-one-out k-NN cosine distance to the rest of the bank. A sparse
  bank (the 10-clip target domain) has a larger scale, so its naturally larger distances are not mistaken
  for anomalies. If ``groups`` (e.g. clip ids) are given to :meth:`KnnCosineScorer.fit`, the leave-one-out
  neighbours exclude points of the same group, because segments of one clip are near-duplicates and would
  make the scale meaningless. A bank whose scale cannot be estimated (a single point or a single group)
  borrows the other domain's scale, or 1.0 if neither has one.

A missing domain (e.g. DCASE2020 has only "source") is simply left out of the combination. Similarities are
batched matrix products over query chunks, so memory is ``O(chunk_size * bank_size)`` (256 x 40k
bank = 40 MB).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DOMAINS = ("source", "target")
COMBINES = ("min", "normalized")


def _normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if t.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(t.shape)}")
    return F.normalize(t.detach().cpu(), dim=1)


def knn_cosine_distance(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    chunk_size: int = 256,
    query_groups: torch.Tensor | None = None,
    bank_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine distance of each (unit-length) query to its ``k`` nearest (unit-length) bank rows.

    ``k`` is capped at the bank size. When both ``query_groups`` and ``bank_groups`` are given, bank rows
    with the same group as the query are excluded (leave-one-group-out); then ``k`` is capped at the
    smallest number of rows left for any query, which the caller must ensure is >= 1.
    """
    if bank.shape[0] == 0:
        raise ValueError("empty bank")
    out = torch.empty(queries.shape[0])
    k_eff = min(k, bank.shape[0])
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start : start + chunk_size] @ bank.T  # [chunk, n_bank]
        kk = k_eff
        if query_groups is not None and bank_groups is not None:
            same = query_groups[start : start + chunk_size, None] == bank_groups[None, :]
            sim = sim.masked_fill(same, -torch.inf)
            kk = min(k_eff, int((~same).sum(dim=1).min()))
        top = sim.topk(kk, dim=1).values
        out[start : start + chunk_size] = (1.0 - top).mean(dim=1)
    return out


class KnnCosineScorer:
    """k-NN cosine-distance scorer with separate source and target banks (see module docstring).

    Fitted state: ``source_bank_``, ``target_bank_`` (unit-length float32 ``[n, D]`` arrays, ``None``
    when the domain is absent), ``source_scale_``, ``target_scale_`` (density scales; 1.0 unless
    ``combine="normalized"``).
    """

    def __init__(
        self,
        k: int = 1,
        combine: str = "min",
        chunk_size: int = 256,
        max_density_points: int = 2000,
        seed: int = 0,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.k = k
        self.combine = combine
        self.chunk_size = chunk_size
        self.max_density_points = max_density_points
        self.seed = seed

    def fit(
        self,
        embeddings: np.ndarray | torch.Tensor,
        domains: Sequence[str] | np.ndarray | None = None,
        groups: Sequence[int] | np.ndarray | None = None,
    ) -> KnnCosineScorer:
        """Store the L2-normalised normal embeddings per domain.

        Args:
            embeddings: ``[N, D]`` embeddings of normal training segments (or clips).
            domains: ``[N]`` values ``"source"``/``"target"``; ``None`` means all source. Map other
                values (e.g. ``"unknown"``) before calling.
            groups: optional ``[N]`` integer group ids (clip index) used only by the ``"normalized"``
                density estimate (leave-one-group-out).
        """
        emb = _normalize(embeddings)
        n = emb.shape[0]
        dom = np.full(n, "source") if domains is None else np.asarray(domains).astype(str)
        if dom.shape != (n,):
            raise ValueError(f"domains must have shape ({n},), got {dom.shape}")
        bad = sorted(set(dom.tolist()) - set(DOMAINS))
        if bad:
            raise ValueError(f"unknown domain values {bad}; expected only {DOMAINS}")
        grp = None if groups is None else np.asarray(groups)
        if grp is not None and grp.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {grp.shape}")
        scales: dict[str, float | None] = {}
        for name in DOMAINS:
            mask = dom == name
            bank = emb[torch.from_numpy(mask)] if mask.any() else None
            setattr(self, f"{name}_bank_", None if bank is None else bank.numpy())
            scales[name] = None
            if bank is not None and self.combine == "normalized":
                scales[name] = self._density_scale(bank, None if grp is None else grp[mask])
        known = [s for s in scales.values() if s is not None]
        for name in DOMAINS:
            # A bank without an estimate borrows the other domain's scale so the min stays comparable.
            s = scales[name] if scales[name] is not None else (known[0] if known else 1.0)
            setattr(self, f"{name}_scale_", float(s))
        if self.source_bank_ is None and self.target_bank_ is None:
            raise ValueError("no embeddings to fit")
        return self

    def _density_scale(self, bank: torch.Tensor, groups: np.ndarray | None) -> float | None:
        """Mean leave-one-out k-NN distance of (sampled) bank points to the rest of the bank."""
        n = bank.shape[0]
        if groups is not None:
            g = torch.as_tensor(np.unique(groups, return_inverse=True)[1].reshape(-1))
            if int(g.max()) == 0:  # a single group: nothing to leave one out against
                return None
        else:
            if n < 2:
                return None
            g = torch.arange(n)  # each point is its own group: plain leave-one-out
        rng = np.random.default_rng(self.seed)
        idx = np.arange(n) if n <= self.max_density_points else rng.choice(n, self.max_density_points, False)
        idx_t = torch.from_numpy(np.sort(idx))
        d = knn_cosine_distance(bank[idx_t], bank, self.k, self.chunk_size, g[idx_t], g)
        return max(float(d.mean()), 1e-6)

    def _check_fitted(self) -> None:
        if not hasattr(self, "source_bank_"):
            raise RuntimeError("KnnCosineScorer is not fitted; call fit() or from_state() first")

    def score_per_domain(self, embeddings: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Raw mean k-NN cosine distance ``[N]`` to each existing bank (keys: present domains)."""
        self._check_fitted()
        q = _normalize(embeddings)
        out: dict[str, np.ndarray] = {}
        for name in DOMAINS:
            bank = getattr(self, f"{name}_bank_")
            if bank is None or len(bank) == 0:
                continue
            if q.shape[1] != bank.shape[1]:
                raise ValueError(f"embedding dim {q.shape[1]} != bank dim {bank.shape[1]}")
            out[name] = knn_cosine_distance(q, torch.from_numpy(bank), self.k, self.chunk_size).numpy()
        return out

    def score(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """Anomaly score ``[N]`` (higher = more anomalous): combined per-domain distances."""
        per = self.score_per_domain(embeddings)
        if self.combine == "normalized":
            per = {name: d / getattr(self, f"{name}_scale_") for name, d in per.items()}
        return np.min(np.stack(list(per.values())), axis=0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted state and settings as plain numpy arrays (absent banks stored as ``[0, D]``)."""
        self._check_fitted()
        dim = next(b.shape[1] for b in (self.source_bank_, self.target_bank_) if b is not None)
        empty = np.zeros((0, dim), dtype=np.float32)
        return {
            "source_bank": empty if self.source_bank_ is None else self.source_bank_,
            "target_bank": empty if self.target_bank_ is None else self.target_bank_,
            "source_scale": np.asarray(self.source_scale_),
            "target_scale": np.asarray(self.target_scale_),
            "k": np.asarray(self.k),
            "combine": np.asarray(self.combine),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], chunk_size: int = 256) -> KnnCosineScorer:
        """Rebuild a fitted scorer from :meth:`state_dict` output."""
        obj = cls(k=int(state["k"]), combine=str(state["combine"]), chunk_size=chunk_size)
        for name in DOMAINS:
            bank = np.asarray(state[f"{name}_bank"], dtype=np.float32)
            setattr(obj, f"{name}_bank_", bank if len(bank) else None)
            setattr(obj, f"{name}_scale_", float(state[f"{name}_scale"]))
        return obj
