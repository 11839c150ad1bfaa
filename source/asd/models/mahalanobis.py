"""Selective Mahalanobis scoring of reconstruction-error vectors (DCASE 2023+ baseline style).

A mean and a covariance of the error vectors of *normal* training data are fitted separately per domain
(source, target). A test vector's score is its Mahalanobis distance under each domain's Gaussian, and the
selective score is the minimum over domains: a target-domain normal sound is close to the target model
even when it is far from the source one, so one threshold can serve both domains.

Regularisation: each covariance is estimated with Ledoit-Wolf shrinkage (scikit-learn's
:class:`~sklearn.covariance.LedoitWolf` estimate, computed here from streamed sums so that memory does not
grow with the number of vectors), towards a scaled identity, so a domain with only a handful of vectors
(the 10-clip target domain) still gives a well-conditioned, invertible matrix. A small ridge
``ridge * mean(diag)`` (plus an absolute floor) is added on top to survive degenerate data such as constant dimensions.

Scoring speed: fitting is done in float64; scoring by default in float32 through the Cholesky factor
``L`` of each covariance (``d = ||L^-1 (x - mean)||``, one triangular solve per batch of vectors and
domain) instead of a float64 quadratic form per vector. ``dtype="float64"`` keeps the exact reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DTYPES = ("float32", "float64")


class MahalanobisScorer:
    """Per-domain Gaussian models of error vectors; score = minimum Mahalanobis distance over domains.

    Fitted state (after :meth:`fit`): ``domains_`` (sorted domain names), ``means_`` ``[n_domains, D]``,
    ``covariances_`` and ``precisions_`` ``[n_domains, D, D]``, ``shrinkages_`` ``[n_domains]``.
    """

    def __init__(self, ridge: float = 1e-6, min_samples: int = 2, chunk_size: int = 8192,
                 dtype: str = "float32") -> None:
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.ridge = ridge
        self.min_samples = min_samples
        self.chunk_size = chunk_size
        self.dtype = dtype

    def fit(self, errors: np.ndarray, domains: Sequence[str] | np.ndarray | None = None) -> MahalanobisScorer:
        """Fit one mean/covariance per domain.

        Args:
            errors: ``[N, D]`` error vectors of normal training data.
            domains: ``[N]`` domain name per row (e.g. ``"source"``/``"target"``); ``None`` means all
                ``"source"``. Domains with fewer than ``min_samples`` rows are skipped (ignored, not fatal).
        """
        x = np.asarray(errors)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"errors must be a non-empty [N, D] array, got shape {x.shape}")
        dom = np.full(x.shape[0], "source") if domains is None else np.asarray(domains).astype(str)
        if dom.shape != (x.shape[0],):
            raise ValueError(f"domains must have shape ({x.shape[0]},), got {dom.shape}")
        moments = DomainMoments()
        for second_pass in (False, True):
            for start in range(0, x.shape[0], self.chunk_size):
                moments.add(x[start:start + self.chunk_size], dom[start:start + self.chunk_size], second_pass)
        return self.fit_moments(moments)

    def fit_moments(self, moments: DomainMoments) -> MahalanobisScorer:
        """Fit from streamed statistics (both passes of :class:`DomainMoments` done)."""
        names, means, covs, precs, shrinks = [], [], [], [], []
        for name in sorted(moments.count):
            if moments.count[name] < self.min_samples:
                continue
            cov, shrinkage = moments.ledoit_wolf(name)
            # Ridge relative to the average variance, with an absolute floor for all-constant data.
            cov = cov + (self.ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-12) + 1e-12) * np.eye(
                cov.shape[0]
            )
            names.append(name)
            means.append(moments.mean(name))
            covs.append(cov)
            precs.append(np.linalg.inv(cov))
            shrinks.append(shrinkage)
        if not names:
            raise ValueError(f"no domain has at least min_samples={self.min_samples} rows")
        self.domains_ = np.asarray(names)
        self.means_ = np.stack(means)
        self.covariances_ = np.stack(covs)
        # Symmetrise so tiny asymmetries from inversion never give negative quadratic forms.
        self.precisions_ = np.stack([(p + p.T) / 2 for p in precs])
        self.shrinkages_ = np.asarray(shrinks)
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Float32 Cholesky factors of the covariances and float32 means, for fast scoring."""
        self._cholesky32 = torch.from_numpy(np.linalg.cholesky(self.covariances_).astype(np.float32))
        self._means32 = torch.from_numpy(self.means_.astype(np.float32))

    def _check_fitted(self) -> None:
        if not hasattr(self, "precisions_"):
            raise RuntimeError("MahalanobisScorer is not fitted; call fit() or from_state() first")

    def distances(self, errors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (square root of the quadratic form, as scipy) of each row under each
        domain: ``[N, n_domains]``, columns in ``domains_`` order, in the scorer's ``dtype``."""
        self._check_fitted()
        x = torch.as_tensor(errors)
        if x.dim() != 2 or x.shape[1] != self.means_.shape[1]:
            raise ValueError(f"errors must be [N, {self.means_.shape[1]}], got shape {tuple(x.shape)}")
        if self.dtype == "float64":
            return torch.from_numpy(self._distances64(x.detach().cpu().numpy()))
        x = x.float()
        chol, means = self._cholesky32.to(x.device), self._means32.to(x.device)
        out = torch.empty(x.shape[0], len(self.domains_), device=x.device)
        for start in range(0, x.shape[0], self.chunk_size):  # bounded memory for many vectors
            part = x[start : start + self.chunk_size]
            for i in range(len(self.domains_)):
                # L z = (x - mean)^T  =>  d^2 = ||z||^2: one triangular solve for the whole batch.
                z = torch.linalg.solve_triangular(chol[i], (part - means[i]).T, upper=False)
                out[start : start + self.chunk_size, i] = z.square().sum(dim=0).sqrt()
        return out

    def _distances64(self, x: np.ndarray) -> np.ndarray:
        """The float64 reference: a quadratic form with the precision matrix per vector."""
        x = x.astype(np.float64)
        out = np.empty((x.shape[0], len(self.domains_)))
        for i in range(len(self.domains_)):
            for start in range(0, x.shape[0], self.chunk_size):
                delta = x[start : start + self.chunk_size] - self.means_[i]
                q = np.einsum("nd,de,ne->n", delta, self.precisions_[i], delta, optimize=True)
                out[start : start + self.chunk_size, i] = np.sqrt(np.maximum(q, 0.0))
        return out

    def score_per_domain(self, errors: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Mahalanobis distance of each row per domain (name -> ``[N]`` numpy array)."""
        dist = self.distances(errors).cpu().numpy()
        return {name: dist[:, i] for i, name in enumerate(self.domains_.tolist())}

    def score(self, errors: np.ndarray | torch.Tensor) -> np.ndarray:
        """Per-vector selective Mahalanobis score ``[N]``: minimum distance over the fitted domains."""
        return self.distances(errors).min(dim=1).values.cpu().numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Fitted state as plain numpy arrays (safe for ``np.savez`` without pickle)."""
        self._check_fitted()
        return {
            "domains": self.domains_.astype(str),
            "means": self.means_,
            "covariances": self.covariances_,
            "precisions": self.precisions_,
            "shrinkages": self.shrinkages_,
            "ridge": np.asarray(self.ridge),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], dtype: str = "float32") -> MahalanobisScorer:
        """Rebuild a fitted scorer from :meth:`state_dict` output."""
        obj = cls(ridge=float(np.asarray(state.get("ridge", 1e-6))), dtype=dtype)
        obj.domains_ = np.asarray(state["domains"]).astype(str)
        obj.means_ = np.asarray(state["means"], dtype=np.float64)
        obj.covariances_ = np.asarray(state["covariances"], dtype=np.float64)
        obj.precisions_ = np.asarray(state["precisions"], dtype=np.float64)
        obj.shrinkages_ = np.asarray(state.get("shrinkages", np.zeros(len(obj.domains_))))
        obj._prepare()
        return obj


class DomainMoments:
    """Per-domain statistics of error vectors streamed in two passes, for a Ledoit-Wolf covariance with
    memory independent of the number of vectors: the first pass sums the vectors (means), the second sums
    the centred outer products and the fourth powers of the centred norms.

    The shrinkage is scikit-learn's :func:`~sklearn.covariance.ledoit_wolf` estimate (Ledoit & Wolf 2004,
    towards ``mu * I`` with ``mu`` the mean variance), computed from these sums instead of the data matrix.
    """

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._scatter: dict[str, np.ndarray] = {}
        self._fourth: dict[str, float] = {}

    def add(self, errors: np.ndarray | torch.Tensor, domains: np.ndarray, second_pass: bool) -> None:
        """Add a batch of ``[n, D]`` error vectors with their ``[n]`` domain names to the given pass.
        The second pass must see the same vectors as the first."""
        x = torch.as_tensor(errors).detach().cpu().numpy()
        domains = np.asarray(domains).astype(str)
        for name in np.unique(domains):
            part = x[domains == name].astype(np.float64)
            if not second_pass:
                self.count[name] = self.count.get(name, 0) + len(part)
                self._sum[name] = self._sum.get(name, 0.0) + part.sum(axis=0)
                continue
            centred = part - self.mean(name)
            self._scatter[name] = self._scatter.get(name, 0.0) + centred.T @ centred
            self._fourth[name] = self._fourth.get(name, 0.0) + float(np.sum(np.sum(centred**2, axis=1) ** 2))

    def mean(self, name: str) -> np.ndarray:
        return self._sum[name] / self.count[name]

    def ledoit_wolf(self, name: str) -> tuple[np.ndarray, float]:
        """(shrunk covariance, shrinkage) of one domain."""
        n = self.count[name]
        emp_cov = self._scatter[name] / n
        n_features = emp_cov.shape[0]
        trace = float(np.trace(emp_cov))
        mu = trace / n_features
        if n_features == 1:
            return emp_cov, 0.0
        delta_ = float(np.sum(emp_cov**2))  # squared Frobenius norm of the empirical covariance
        beta = (self._fourth[name] / n - delta_) / (n_features * n)
        delta = (delta_ - 2.0 * mu * trace + n_features * mu**2) / n_features
        beta = min(beta, delta)
        shrinkage = 0.0 if beta == 0 else beta / delta
        shrunk = (1.0 - shrinkage) * emp_cov
        shrunk.flat[:: n_features + 1] += shrinkage * mu
        return shrunk, shrinkage
