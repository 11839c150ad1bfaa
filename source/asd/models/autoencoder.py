"""The DCASE baseline autoencoder as a detector: MSE ("simple AE") or selective Mahalanobis scores.

Feature vectors are 5 consecutive log-mel frames (640-d) taken inside each cached 1-second segment; a
segment's score is the mean over its vectors, a clip's raw score the reduction of its segments' scores
(the run's `--aggregate`).

Selective Mahalanobis (`selective="clip"`, the official baseline's order): each segment gets one mean
distance per domain model, each is reduced over the clip, and the calibration takes the smallest
standardised one. `selective="vector"` takes the minimum per vector first.

Calibration by construction (:mod:`asd.models.fold_networks`): the normal training clips are dealt into
``n_networks`` folds (stratified by section and domain) and network ``k`` learns every fold but ``k``; the
clips of fold ``k`` watch its loss for early stopping and, scored by it, give the out-of-fold statistics
each section and domain is standardised with. A test clip's score is the mean of the networks' calibrated
scores. Two networks on half the clips cost about what one network on all of them did.

Training reads the log-mel blocks of the training clips once into memory when they fit the budget
(`FitConfig.memory_budget_mib`) and draws shuffled batches of vectors from a strided view of them;
otherwise it streams block-shuffled draws from the shard. Without an explicit epoch count it stops when
the held-out fold's loss stops improving and keeps the best epoch's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from asd.cache.reading import iterate_in_order, load_frames, rows_nbytes, segment_rows_of, stream_segments
from asd.cache.shard import Shard
from asd.dataset.layout import DOMAINS
from asd.models.autoencoder_net import DcaseAutoencoder, frames_to_vectors, per_dim_error, strided_vectors
from asd.models.base import Detector, FitConfig, aggregate_clip_scores
from asd.models.device import set_threads
from asd.models.fold_networks import FoldCalibration, assign_folds
from asd.models.mahalanobis import DomainMoments, MahalanobisScorer
from asd.models.training import Adam, EarlyStopping

SCORE_MODES = ("mse", "mahalanobis")
SELECTIVE_RULES = ("clip", "vector")
SCORE_BATCH_SEGMENTS = 128  # segments scored at once: 3,584 vectors, ~10 MB per [vectors, 640] tensor


@dataclass(frozen=True)
class AutoencoderDetectorConfig:
    """DCASE baseline settings (SPEC §6)."""

    score: str = "mse"  # "mse" (simple AE) or "mahalanobis" (selective Mahalanobis)
    selective: str = "clip"  # Mahalanobis: "clip" (mean per domain over the clip, then min) or "vector"
    context: int = 5
    hidden: int = 128
    bottleneck: int = 8
    epochs: int = 100  # the cap when stopping early; exact with FitConfig.epochs
    batch_size: int = 256
    learning_rate: float = 1e-3
    # Error vectors used to fit each domain's covariance: a deterministic subset keeps memory bounded.
    max_covariance_vectors: int = 20000
    # Calibration: the clips are dealt into this many folds and network k never learns fold k, so every
    # training clip has a score from a network that never saw it (asd.models.fold_networks).
    n_networks: int = 2
    min_clips_for_sd: int = 20  # a domain with fewer out-of-fold scores borrows its section's largest spread


class AutoencoderDetector(Detector):
    """DCASE baseline autoencoder on complementary folds. Fitted state: `networks_`, `mahalanobis_` (one
    per network), `calibration_`, `history_` (the first network's), `stopping_` (per network)."""

    name = "ae"
    config_class = AutoencoderDetectorConfig

    def __init__(self, config: AutoencoderDetectorConfig = AutoencoderDetectorConfig()) -> None:
        if config.score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, not {config.score!r}")
        if config.selective not in SELECTIVE_RULES:
            raise ValueError(f"selective must be one of {SELECTIVE_RULES}, not {config.selective!r}")
        if config.n_networks < 2:
            raise ValueError(f"n_networks must be >= 2 (each clip needs a network that never saw it), "
                             f"got {config.n_networks}")
        super().__init__(config)
        self.networks_: list[DcaseAutoencoder] = []
        self.mahalanobis_: list[MahalanobisScorer] = []
        self.calibration_: FoldCalibration | None = None
        self.stopping_: list[dict] = []

    def _build(self, n_mels: int) -> DcaseAutoencoder:
        cfg = self.config
        return DcaseAutoencoder(n_mels * cfg.context, cfg.hidden, cfg.bottleneck)

    def _vectors(self, mels: np.ndarray, device: torch.device) -> torch.Tensor:
        return frames_to_vectors(torch.from_numpy(mels).to(device), self.config.context)

    def _fit(self, shard: Shard, train_clips: np.ndarray, fit_config: FitConfig, device: torch.device,
             log) -> np.ndarray:
        n = self.config.n_networks
        table = shard.clips.loc[train_clips]
        sections, domains = table["section"].to_numpy().astype(str), table["domain"].to_numpy().astype(str)
        folds = assign_folds(np.char.add(np.char.add(sections, "/"), domains), n, fit_config.seed)
        self.networks_, self.mahalanobis_, self.stopping_, raw_by_network = [], [], [], []
        for k in range(n):
            learn, held = train_clips[folds != k], train_clips[folds == k]
            log(f"network {k + 1}/{n}: learns {len(learn)} clips; the {len(held)} others calibrate it")
            network, history, stopping = self._train_network(shard, learn, held, fit_config,
                                                             fit_config.seed + 1000 * k, device, log)
            rng = np.random.default_rng(fit_config.seed + 1000 * k)
            mahalanobis = self._fit_mahalanobis(network, shard, segment_rows_of(shard, learn), rng)
            self.networks_.append(network)
            self.mahalanobis_.append(mahalanobis)
            self.stopping_.append(stopping)
            self.history_ = self.history_ or history  # the first network's curves stand for the others
            raw_by_network.append(self._raw_scores(network, mahalanobis, shard, train_clips, device))
        self.calibration_, out_of_fold = FoldCalibration.fit(raw_by_network, folds, sections, domains,
                                                             self.config.min_clips_for_sd)
        log("calibration (out-of-fold scores): " + ", ".join(
            f"{row['section']}/{row['domain']}: {row['oof_mean']:.4g} ± {row['oof_sd']:.3g} (n={row['n_oof']})"
            for row in self.calibration_.calibration.table()) + f"; networks' spread factor "
            f"{self.calibration_.spread:.3f}")
        return out_of_fold

    def _train_network(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray,
                       fit_config: FitConfig, seed: int, device: torch.device, log
                       ) -> tuple[DcaseAutoencoder, list[dict], dict]:
        """One autoencoder trained on `train_clips`; `val_clips` (never trained on) watch its loss."""
        from tqdm.auto import tqdm

        cfg = self.config
        threads = set_threads(fit_config.threads)
        torch.manual_seed(seed)
        network = self._build(shard.feature_config.n_mels).to(device)
        optimizer = Adam(network.parameters(), lr=cfg.learning_rate)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        train_rows = segment_rows_of(shard, train_clips)
        val_rows = segment_rows_of(shard, val_clips)
        max_epochs, fixed = fit_config.epoch_plan(cfg.epochs)
        stopper = EarlyStopping(fit_config.patience, fit_config.min_delta, fixed=fixed)
        monitor = "val_loss" if len(val_rows) else "train_loss"
        needed = rows_nbytes(shard, len(train_rows) + len(val_rows), fit_config.cache_dtype)
        in_memory = needed <= fit_config.memory_budget_mib * 2**20
        if in_memory:
            train_frames = torch.from_numpy(load_frames(shard, train_rows, fit_config.cache_dtype)).to(device)
            val_frames = torch.from_numpy(load_frames(shard, val_rows, fit_config.cache_dtype)).to(device)
        log(f"{len(train_rows)} training segments, {len(val_rows)} held out; "
            + (f"read once into memory ({needed / 2**20:.0f} MiB {fit_config.cache_dtype})" if in_memory else
               f"streamed from the shard ({needed / 2**20:.0f} MiB > budget {fit_config.memory_budget_mib:g} MiB)")
            + f"; {threads} threads; " + (f"{max_epochs} epochs" if fixed else
            f"early stopping on {monitor} (patience {fit_config.patience}, min_delta {fit_config.min_delta:g}, "
            f"at most {max_epochs} epochs)"))
        history: list[dict] = []
        bar = tqdm(range(max_epochs), desc=f"train ae ({cfg.score}) {shard.machine}", unit="epoch", leave=False)
        for epoch in bar:
            network.train()
            if in_memory:
                total, count = self._epoch_in_memory(network, optimizer, train_frames, generator, device)
            else:
                total, count = self._epoch_streamed(network, optimizer, shard, train_rows, rng, generator,
                                                    device)
            record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
            if len(val_rows):
                record["val_loss"] = (self._frames_loss(network, val_frames) if in_memory else
                                      float(np.mean(self._segment_errors(network, shard, val_rows, device))))
            history.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if stopper.step(epoch + 1, record[monitor], network):
                break
        bar.close()
        stopper.restore(network)
        stopping = {**stopper.summary(), "monitor": monitor}
        log(f"kept the weights of epoch {stopper.chosen_epoch} of {stopper.epochs_run} run"
            + ("" if fixed else f" ({monitor} {stopper.best_value:.5g}; "
               + ("stopped early" if stopping["stopped_early"] else "reached the cap") + ")"))
        if in_memory:
            del train_frames, val_frames
        return network.cpu().eval(), history, stopping

    def _train_step(self, network: nn.Module, optimizer: Adam, batch: torch.Tensor) -> float:
        loss = nn.functional.mse_loss(network(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def _epoch_in_memory(self, network: nn.Module, optimizer: Adam, frames: torch.Tensor,
                         generator: torch.Generator, device: torch.device) -> tuple[float, int]:
        """One pass over every vector in a fresh random order; batches gathered from a strided view."""
        view = strided_vectors(frames, self.config.context)  # [n_segments, n_windows, dim], no copy
        n_windows = view.shape[1]
        order = torch.randperm(view.shape[0] * n_windows, generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            batch = view[index // n_windows, index % n_windows].float()
            total += self._train_step(network, optimizer, batch) * len(batch)
            count += len(batch)
        return total, count

    def _epoch_streamed(self, network: nn.Module, optimizer: Adam, shard: Shard,
                        rows: np.ndarray, rng: np.random.Generator, generator: torch.Generator,
                        device: torch.device) -> tuple[float, int]:
        """One pass in block-shuffled draws from the shard (bounded memory for any shard size)."""
        total, count = 0.0, 0
        for mels, _ in stream_segments(shard, rows, rng):
            vectors = self._vectors(mels, device)
            order = torch.randperm(len(vectors), generator=generator).to(device)
            for start in range(0, len(order), self.config.batch_size):
                batch = vectors[order[start:start + self.config.batch_size]]
                if len(batch) < 2:
                    continue
                total += self._train_step(network, optimizer, batch) * len(batch)
                count += len(batch)
        return total, count

    @torch.no_grad()
    def _frames_loss(self, network: nn.Module, frames: torch.Tensor,
                     batch_segments: int = SCORE_BATCH_SEGMENTS) -> float:
        """Mean squared reconstruction error over every vector of in-memory frames (eval mode)."""
        network.eval()
        total, count = 0.0, 0
        for start in range(0, len(frames), batch_segments):
            view = strided_vectors(frames[start:start + batch_segments], self.config.context)
            vectors = view.reshape(-1, view.shape[-1]).float()
            total += float(((network(vectors) - vectors) ** 2).mean(dim=1).sum())
            count += len(vectors)
        return total / max(count, 1)

    @torch.no_grad()
    def _segment_errors(self, network: nn.Module, shard: Shard, rows: np.ndarray,
                        device: torch.device) -> np.ndarray:
        """Mean squared reconstruction error per segment."""
        network.eval()
        out = []
        for mels, _ in iterate_in_order(shard, rows, SCORE_BATCH_SEGMENTS):
            vectors = self._vectors(mels, device)
            error = ((network(vectors) - vectors) ** 2).mean(dim=1)
            out.append(error.view(len(mels), -1).mean(dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    @torch.no_grad()
    def _fit_mahalanobis(self, network: nn.Module, shard: Shard, rows: np.ndarray,
                         rng: np.random.Generator) -> MahalanobisScorer:
        """Per-domain covariance of reconstruction-error vectors on a bounded subset of training segments."""
        n_vectors_per_segment = shard.feature_config.n_frames - self.config.context + 1
        cap = max(1, self.config.max_covariance_vectors // n_vectors_per_segment)
        domain_of_clip = shard.clips["domain"].to_numpy()
        clip_of_row = shard.segments["clip_index"].to_numpy()
        chosen = []
        for domain in np.unique(domain_of_clip[clip_of_row[rows]]):
            in_domain = rows[domain_of_clip[clip_of_row[rows]] == domain]
            chosen.append(np.sort(rng.choice(in_domain, size=min(cap, len(in_domain)), replace=False)))
        chosen = np.sort(np.concatenate(chosen))
        moments = DomainMoments()  # two streamed passes: memory does not grow with the number of vectors
        for second_pass in (False, True):
            for mels, seg_rows in iterate_in_order(shard, chosen, SCORE_BATCH_SEGMENTS):
                vectors = self._vectors(mels, torch.device("cpu"))
                domains = np.repeat(domain_of_clip[clip_of_row[seg_rows]], n_vectors_per_segment)
                moments.add(per_dim_error(vectors, network(vectors)), domains, second_pass)
        return MahalanobisScorer().fit_moments(moments)

    @torch.no_grad()
    def _segment_scores(self, network: nn.Module, mahalanobis: MahalanobisScorer, shard: Shard,
                        rows: np.ndarray, device: torch.device) -> np.ndarray:
        """`[n]` mean error per segment (MSE, or Mahalanobis with the per-vector rule), or `[n, k]` mean
        Mahalanobis distance per segment under each of the k domains the network's errors were fitted on."""
        network = network.to(device).eval()
        out = []
        for mels, _ in iterate_in_order(shard, rows, SCORE_BATCH_SEGMENTS):
            vectors = self._vectors(mels, device)
            n = len(mels)
            if self.config.score == "mse":
                per = ((network(vectors) - vectors) ** 2).mean(dim=1).view(n, -1).mean(dim=1)
            else:
                dist = mahalanobis.distances(per_dim_error(vectors, network(vectors)))  # [n * W, k]
                if self.config.selective == "vector":
                    per = dist.min(dim=1).values.view(n, -1).mean(dim=1)
                else:
                    per = dist.view(n, -1, dist.shape[1]).mean(dim=1)
            out.append(per.cpu().numpy())
        network.cpu()
        columns = self.config.score == "mahalanobis" and self.config.selective == "clip"
        if out:
            return np.concatenate(out)
        return np.zeros((0, len(mahalanobis.domains_))) if columns else np.zeros(0)

    def _raw_scores(self, network: nn.Module, mahalanobis: MahalanobisScorer, shard: Shard,
                    clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        """Raw clip scores ``[n, 2]`` of the sorted clips, one column per domain of ``DOMAINS``: the
        segment scores reduced over each clip by the model's reducer. The selective Mahalanobis rule has a
        column per domain model (``inf`` for a domain without one); the others repeat their one score."""
        rows = segment_rows_of(shard, clip_indices)
        clip_of_row = shard.segments["clip_index"].to_numpy()[rows]
        per_segment = self._segment_scores(network, mahalanobis, shard, rows, device)
        out = np.full((len(clip_indices), len(DOMAINS)), np.inf)
        if per_segment.ndim == 1:
            clip_scores = aggregate_clip_scores(per_segment, clip_of_row, self.reducer)
            out[:] = clip_scores.reindex(clip_indices).to_numpy()[:, None]
            return out
        for j, domain in enumerate(mahalanobis.domains_):
            if str(domain) in DOMAINS:
                clip_scores = aggregate_clip_scores(per_segment[:, j], clip_of_row, self.reducer)
                out[:, DOMAINS.index(str(domain))] = clip_scores.reindex(clip_indices).to_numpy()
        return out

    def _score(self, shard: Shard, clip_indices: np.ndarray, device: torch.device) -> np.ndarray:
        sections = shard.clips["section"].to_numpy().astype(str)[clip_indices]
        raw = [self._raw_scores(network, mahalanobis, shard, clip_indices, device)
               for network, mahalanobis in zip(self.networks_, self.mahalanobis_, strict=True)]
        return self.calibration_.combine(raw, sections)

    def _state(self) -> dict[str, Any]:
        mahalanobis = []
        for scorer in self.mahalanobis_:
            maha = scorer.state_dict()
            mahalanobis.append({"arrays": {k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                                           for k, v in maha.items() if k != "domains"},
                                "domains": [str(d) for d in maha["domains"]]})
        return {"networks": [network.state_dict() for network in self.networks_], "mahalanobis": mahalanobis,
                "calibration": self.calibration_.state(),
                "stopping": [dict(s) for s in self.stopping_]}  # epochs run, the epoch kept, the rule

    def _load_state(self, state: dict[str, Any]) -> None:
        n_mels = int(self.feature_config_["n_mels"])
        self.networks_ = []
        for weights in state["networks"]:
            network = self._build(n_mels)
            network.load_state_dict(weights)
            self.networks_.append(network.eval())
        self.mahalanobis_ = []
        for saved in state["mahalanobis"]:
            maha = {k: v.numpy() for k, v in saved["arrays"].items()}
            maha["domains"] = np.asarray(saved["domains"])
            self.mahalanobis_.append(MahalanobisScorer.from_state(maha))
        self.calibration_ = FoldCalibration.from_state(state["calibration"])
        self.stopping_ = [dict(s) for s in state.get("stopping", [])]
