"""What the learned detectors share: networks on complementary folds, embeddings, domain-aware nearest
neighbours, calibration (SPEC §6).

A subclass says how its networks learn (`_train_fold`) and how a network embeds clips (`_embed`). This
class does the rest:

1. **Folds.** The normal training clips are dealt into ``n_networks`` folds, stratified by class; network
   ``k`` learns from every fold but ``k`` (:mod:`asd.models.fold_networks`). With ``scope="dataset"`` the
   networks learn once from every machine type of a dataset (`fit_shared`; each machine type's folds are
   kept with them) and each machine type's detector takes them.
2. **References.** Per network, every training clip is embedded; per section, the source reference is 16
   k-means centroids of the source clips, the target reference every target clip
   (:class:`~asd.models.knn_domain.DomainBanks`). A clip's raw scores are its cosine distances to the
   nearest reference of each domain.
3. **Calibration.** A clip of fold ``k`` is scored by network ``k``, against references built without it:
   unseen twice over, as a test clip is. Those out-of-fold distances standardise each section and domain;
   a clip's score is the smallest z over the domains, the test score the mean over the networks
   (:class:`~asd.models.fold_networks.FoldCalibration`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asd.cache.shard import Shard
from asd.errors import BadState
from asd.models.base import Detector, FitConfig
from asd.models.calibration import DOMAINS, domain_column
from asd.models.device import resolve_device, set_threads
from asd.models.embedding_data import clip_class_names
from asd.models.fold_networks import FoldCalibration, assign_folds
from asd.models.knn_domain import DomainBanks

Part = tuple[str, Shard, np.ndarray]  # machine type, training shard, its sorted training clips


def class_names_of(parts: list[Part], prefixed: bool) -> np.ndarray:
    """Each training clip's auxiliary class, part after part (prefixed by its machine type when the
    networks learn several): the labels the networks learn and the strata their folds are dealt by."""
    return np.concatenate([np.char.add(f"{machine}/" if prefixed else "",
                                       clip_class_names(shard.clips.loc[clips]).astype(str))
                           for machine, shard, clips in parts])


@dataclass
class FoldNetworks:
    """Networks trained on complementary folds of one or several machine types' clips: network ``k`` never
    saw fold ``k``. ``folds`` maps a machine type to (its training clips, the fold of each)."""

    networks: list[torch.nn.Module]
    class_names: list[str]
    folds: dict[str, tuple[np.ndarray, np.ndarray]]
    history: list[dict] = field(default_factory=list)


class EmbeddingKnnDetector(Detector):
    """Base of the learned detectors. The config needs ``n_networks`` (>= 2), ``n_source_centroids``,
    ``target_mixup``, ``density_scaling``, ``scope`` ("dataset" or "machine"), ``epochs``,
    ``min_clips_for_sd`` and ``relative_spread``. Fitted state: `networks_`,
    `banks_` (one :class:`DomainBanks` per network), `calibration_`, `class_names_`; `shared_` holds
    networks trained for several machine types before `fit` (see `fit_shared`)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.networks_: list[torch.nn.Module] = []
        self.banks_: list[DomainBanks] = []
        self.calibration_: FoldCalibration | None = None
        self.class_names_: list[str] = []
        self.shared_: FoldNetworks | None = None

    # --- what a learned detector implements ---------------------------------------------------------
    @abstractmethod
    def _train_fold(self, clips: list[tuple[Shard, np.ndarray]], labels: np.ndarray, n_classes: int,
                    fit_config: FitConfig, seed: int, device: torch.device, log: Callable[[str], None],
                    desc: str) -> tuple[torch.nn.Module, list[dict]]:
        """One network trained on the given (shard, clip indices) pairs, whose class indices are `labels`."""

    @abstractmethod
    def _embed(self, network: torch.nn.Module, shard: Shard, clip_indices: np.ndarray,
               device: torch.device) -> np.ndarray:
        """Unit-length embeddings ``[n, D]`` of the sorted clips."""

    @abstractmethod
    def _network_state(self, network: torch.nn.Module) -> dict[str, Any]:
        """What rebuilds one network (weights and shape)."""

    @abstractmethod
    def _load_network(self, state: dict[str, Any]) -> torch.nn.Module:
        """Inverse of `_network_state`."""

    # --- training ------------------------------------------------------------------------------------
    def fit_shared(self, parts: list[Part], fit_config: FitConfig, log: Callable[[str], None] = print,
                   aux_parts: list[Part] = ()) -> FoldNetworks:
        """Train the fold networks once on several machine types: ``parts`` are (machine type, training
        shard, training clips). ``aux_parts`` (same shape) only add auxiliary classes: every network learns
        all of their clips, and they are never scored. Give the result to each machine type's detector as
        ``shared_``."""
        set_threads(fit_config.threads)
        return self._train_networks(parts, fit_config, resolve_device(fit_config.device), log, prefixed=True,
                                    aux_parts=list(aux_parts))

    def _train_networks(self, parts: list[Part], fit_config: FitConfig, device: torch.device,
                        log: Callable[[str], None], prefixed: bool, aux_parts: list[Part] = ()) -> FoldNetworks:
        every = [*parts, *aux_parts]
        if len({shard.fingerprint for _, shard, _ in every}) > 1:
            raise BadState("one network cannot learn machine types prepared with different features ("
                           + ", ".join(f"{shard.path}: {shard.fingerprint}" for _, shard, _ in every)
                           + "); prepare them with the same data_prep settings, or train with "
                           "--model-option scope=machine")
        names = class_names_of(every, prefixed)
        table = sorted(set(names.tolist()))
        labels = np.searchsorted(np.asarray(table), names)
        n_own = sum(len(clips) for _, _, clips in parts)
        n = self.config.n_networks
        folds = assign_folds(names[:n_own], n, fit_config.seed)  # auxiliary clips: in every network
        owner = np.concatenate([np.full(len(clips), i) for i, (_, _, clips) in enumerate(parts)])
        counts = np.bincount(labels, minlength=len(table))
        log(f"{len(table)} classes, {n_own} training clips in {n} folds (network k never sees fold k)"
            + (f", {len(names) - n_own} auxiliary clips every network learns" if aux_parts else "")
            + "; clips per class: " + ", ".join(f"{name}={c}" for name, c in zip(table, counts, strict=True)))
        networks, history = [], []
        for k in range(n):
            learn = folds != k
            clips = [(shard, part_clips[learn[owner == i]]) for i, (_, shard, part_clips) in enumerate(parts)]
            clips += [(shard, part_clips) for _, shard, part_clips in aux_parts]
            network, losses = self._train_fold(clips, np.concatenate([labels[:n_own][learn], labels[n_own:]]),
                                               len(table), fit_config, fit_config.seed + 1000 * k, device, log,
                                               desc=f"{self.name} network {k + 1}/{n}")
            networks.append(network)
            history = history or losses  # the first network's curves stand for the others in loss.png
        return FoldNetworks(networks, table, {machine: (clips, folds[owner == i])
                                              for i, (machine, _, clips) in enumerate(parts)}, history)

    def _fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, device: torch.device,
             log) -> np.ndarray:
        set_threads(fit_config.threads)
        shared = self.shared_
        if shared is None:
            if self.config.scope == "dataset":
                log("scope dataset: no networks were trained for the whole dataset (a single machine type); "
                    "training on this machine type alone")
            shared = self._train_networks([(shard.machine, shard, train_clips)], fit_config, device, log,
                                          prefixed=False)
        else:
            log(f"using {len(shared.networks)} network(s) trained for the whole dataset "
                f"({len(shared.class_names)} classes)")
        their_clips, folds = shared.folds.get(shard.machine, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        if not np.array_equal(their_clips, train_clips):
            raise BadState(f"{shard.path}: the shared networks were trained on other clips of {shard.machine} "
                           "than this detector is fitted on; train them again with the same settings")
        self.networks_, self.class_names_, self.history_ = shared.networks, shared.class_names, shared.history
        table = shard.clips.loc[train_clips]
        sections, domains = table["section"].to_numpy().astype(str), table["domain"].to_numpy().astype(str)
        self.banks_, raw_by_network = [], []
        for k, network in enumerate(self.networks_):
            embeddings = self._embed(network, shard, train_clips, device)
            banks = DomainBanks(self.config.n_source_centroids, fit_config.seed, self.config.target_mixup,
                                self.config.density_scaling).fit(embeddings, sections, domains)
            raw = banks.distances(embeddings, sections)  # in-sample: only the networks' correlation uses it
            held = folds == k
            if held.any():
                raw[held] = banks.held_out(embeddings, sections, domains, held)
            self.banks_.append(banks)
            raw_by_network.append(raw)
        self.calibration_, out_of_fold = FoldCalibration.fit(raw_by_network, folds, sections, domains,
                                                             self.config.min_clips_for_sd,
                                                             self.config.relative_spread)
        log("calibration (out-of-fold distances): " + ", ".join(
            f"{row['section']}/{row['domain']}: {row['oof_mean']:.4g} ± {row['oof_sd']:.3g} (n={row['n_oof']})"
            for row in self.calibration_.calibration.table())
            + f"; networks' spread factor {self.calibration_.spread:.3f}")
        return out_of_fold

    # --- scoring -------------------------------------------------------------------------------------
    def raw_distances(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> list[np.ndarray]:
        """Each network's raw scores ``[n, 2]`` of the sorted clips (distances to the nearest reference of
        each domain, in the order of ``DOMAINS``)."""
        sections = shard.clips["section"].to_numpy().astype(str)[clip_indices]
        return [banks.distances(self._embed(network, shard, clip_indices, device), sections)
                for network, banks in zip(self.networks_, self.banks_, strict=True)]

    def _score(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        out = np.empty(len(clip_indices))
        sections = shard.clips["section"].to_numpy().astype(str)
        for first in range(0, len(clip_indices), 256):  # bounded memory on large test shards
            part = clip_indices[first:first + 256]
            out[first:first + len(part)] = self.calibration_.combine(self.raw_distances(shard, part, device),
                                                                     sections[part])
        return out

    # --- checkpoint ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"networks": [self._network_state(network) for network in self.networks_],
                "banks": [banks.state() for banks in self.banks_], "calibration": self.calibration_.state(),
                "class_names": list(self.class_names_)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.class_names_ = list(state["class_names"])
        self.networks_ = [self._load_network(network).eval() for network in state["networks"]]
        self.banks_ = [DomainBanks.from_state(banks) for banks in state["banks"]]
        self.calibration_ = FoldCalibration.from_state(state["calibration"])


__all__ = ["DOMAINS", "EmbeddingKnnDetector", "FoldNetworks", "domain_column"]
