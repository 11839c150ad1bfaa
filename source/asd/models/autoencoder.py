"""The DCASE baseline autoencoder as a detector: MSE ("simple AE") or selective Mahalanobis scores.

Feature vectors are 5 consecutive log-mel frames (640-d) taken inside each cached 1-second segment; a
segment's score is the mean over its vectors, a clip's score the reduction of its segments' scores.

Selective Mahalanobis (`selective="clip"`, the official baseline's order): each segment gets one mean
distance per domain (a column), `Detector.score_clips` reduces each column over the clip and the clip
takes the minimum of its domain scores. `selective="vector"` takes the minimum per vector first.

Training reads the log-mel blocks of the training clips once into memory when they fit the budget
(`FitConfig.memory_budget_mib`) and draws shuffled batches of vectors from a strided view of them;
otherwise it streams block-shuffled draws from the shard. Without an explicit epoch count it stops when
the held-out loss stops improving and keeps the best epoch's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from asd.cache.reading import iterate_in_order, load_frames, rows_nbytes, segment_rows_of, stream_segments
from asd.cache.shard import Shard
from asd.models.autoencoder_net import DcaseAutoencoder, frames_to_vectors, per_dim_error, strided_vectors
from asd.models.base import Detector, FitConfig
from asd.models.device import set_threads
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


class AutoencoderDetector(Detector):
    """DCASE baseline autoencoder. Fitted state: `network_`, `mahalanobis_`, `history_`, `stopping_`."""

    name = "ae"
    config_class = AutoencoderDetectorConfig

    def __init__(self, config: AutoencoderDetectorConfig = AutoencoderDetectorConfig()) -> None:
        if config.score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, not {config.score!r}")
        if config.selective not in SELECTIVE_RULES:
            raise ValueError(f"selective must be one of {SELECTIVE_RULES}, not {config.selective!r}")
        super().__init__(config)
        self.network_: DcaseAutoencoder | None = None
        self.mahalanobis_: MahalanobisScorer | None = None
        self.stopping_: dict = {}

    def _build(self, n_mels: int) -> DcaseAutoencoder:
        cfg = self.config
        return DcaseAutoencoder(n_mels * cfg.context, cfg.hidden, cfg.bottleneck)

    def _vectors(self, mels: np.ndarray, device: torch.device) -> torch.Tensor:
        return frames_to_vectors(torch.from_numpy(mels).to(device), self.config.context)

    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, fit_config: FitConfig,
             device: torch.device, log) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        threads = set_threads(fit_config.threads)
        network = self._build(shard.feature_config.n_mels).to(device)
        optimizer = Adam(network.parameters(), lr=cfg.learning_rate)
        rng = np.random.default_rng(fit_config.seed)
        generator = torch.Generator().manual_seed(fit_config.seed)
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
            self.history_.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if stopper.step(epoch + 1, record[monitor], network):
                break
        bar.close()
        stopper.restore(network)
        self.stopping_ = {**stopper.summary(), "monitor": monitor}
        log(f"kept the weights of epoch {stopper.chosen_epoch} of {stopper.epochs_run} run"
            + ("" if fixed else f" ({monitor} {stopper.best_value:.5g}; "
               + ("stopped early" if self.stopping_["stopped_early"] else "reached the cap") + ")"))
        if in_memory:
            del train_frames, val_frames
        self.network_ = network.cpu().eval()
        self.mahalanobis_ = self._fit_mahalanobis(shard, train_rows, rng)

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
    def _fit_mahalanobis(self, shard: Shard, rows: np.ndarray, rng: np.random.Generator) -> MahalanobisScorer:
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
                moments.add(per_dim_error(vectors, self.network_(vectors)), domains, second_pass)
        return MahalanobisScorer().fit_moments(moments)

    @torch.no_grad()
    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        """`[n]` mean error per segment (MSE, or Mahalanobis with the per-vector rule), or `[n, k]` mean
        Mahalanobis distance per segment under each of the k domains (the clip rule)."""
        network = self.network_.to(device).eval()
        out = []
        for mels, _ in iterate_in_order(shard, rows, SCORE_BATCH_SEGMENTS):
            vectors = self._vectors(mels, device)
            n = len(mels)
            if self.config.score == "mse":
                per = ((network(vectors) - vectors) ** 2).mean(dim=1).view(n, -1).mean(dim=1)
            else:
                dist = self.mahalanobis_.distances(per_dim_error(vectors, network(vectors)))  # [n * W, k]
                if self.config.selective == "vector":
                    per = dist.min(dim=1).values.view(n, -1).mean(dim=1)
                else:
                    per = dist.view(n, -1, dist.shape[1]).mean(dim=1)
            out.append(per.cpu().numpy())
        if out:
            return np.concatenate(out)
        columns = self.config.score == "mahalanobis" and self.config.selective == "clip"
        return np.zeros((0, len(self.mahalanobis_.domains_))) if columns else np.zeros(0)

    def _state(self) -> dict[str, Any]:
        maha = self.mahalanobis_.state_dict()
        return {
            "network": self.network_.state_dict(),
            "mahalanobis": {k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                            for k, v in maha.items() if k != "domains"},
            "mahalanobis_domains": [str(d) for d in maha["domains"]],
            "stopping": dict(self.stopping_),  # epochs run, the epoch kept, the rule
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        n_mels = int(self.feature_config_["n_mels"])
        self.network_ = self._build(n_mels)
        self.network_.load_state_dict(state["network"])
        self.network_.eval()
        maha = {k: v.numpy() for k, v in state["mahalanobis"].items()}
        maha["domains"] = np.asarray(state["mahalanobis_domains"])
        self.mahalanobis_ = MahalanobisScorer.from_state(maha)
        self.stopping_ = dict(state.get("stopping", {}))

    def with_score(self, score: str) -> AutoencoderDetector:
        """The same fitted network scored another way (both modes are fitted by `fit`)."""
        from dataclasses import replace

        other = AutoencoderDetector(replace(self.config, score=score))
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k != "config"})
        other.thresholds_ = {}
        return other
