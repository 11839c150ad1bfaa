"""The DCASE baseline autoencoder as a detector: MSE ("simple AE") or selective Mahalanobis scores.

Feature vectors are 5 consecutive log-mel frames (640-d) taken inside each cached 1-second segment; a
segment's score is the mean over its vectors, a clip's score the reduction of its segments' scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from asd.data import iterate_in_order, segment_rows_of, stream_segments
from asd.detector import Detector, TrainConfig
from asd.models.autoencoder_net import DcaseAutoencoder, frames_to_vectors, per_dim_error
from asd.models.mahalanobis import MahalanobisScorer
from asd.shard import Shard

SCORE_MODES = ("mse", "mahalanobis")


@dataclass(frozen=True)
class AutoencoderDetectorConfig:
    """DCASE baseline settings (SPEC §6)."""

    score: str = "mse"  # "mse" (simple AE) or "mahalanobis" (selective Mahalanobis)
    context: int = 5
    hidden: int = 128
    bottleneck: int = 8
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    # Error vectors used to fit each domain's covariance: a deterministic subset keeps memory bounded.
    max_covariance_vectors: int = 20000


class AutoencoderDetector(Detector):
    """DCASE baseline autoencoder. Fitted state: `network_`, `mahalanobis_`, `history_`."""

    name = "ae"
    config_class = AutoencoderDetectorConfig

    def __init__(self, config: AutoencoderDetectorConfig = AutoencoderDetectorConfig()) -> None:
        if config.score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, not {config.score!r}")
        super().__init__(config)
        self.network_: DcaseAutoencoder | None = None
        self.mahalanobis_: MahalanobisScorer | None = None

    def _build(self, n_mels: int) -> DcaseAutoencoder:
        cfg = self.config
        return DcaseAutoencoder(n_mels * cfg.context, cfg.hidden, cfg.bottleneck)

    def _vectors(self, mels: np.ndarray, device: torch.device) -> torch.Tensor:
        return frames_to_vectors(torch.from_numpy(mels).to(device), self.config.context)

    def _fit(self, shard: Shard, train_clips: np.ndarray, val_clips: np.ndarray, train: TrainConfig,
             device: torch.device, log) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        network = self._build(shard.feature_config.n_mels).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.learning_rate)
        loss_fn = nn.MSELoss()
        rng = np.random.default_rng(train.seed)
        generator = torch.Generator().manual_seed(train.seed)
        train_rows = segment_rows_of(shard, train_clips)
        val_rows = segment_rows_of(shard, val_clips)
        epochs = train.epochs or cfg.epochs
        bar = tqdm(range(epochs), desc=f"train ae ({cfg.score}) {shard.machine}", unit="epoch", leave=False)
        for epoch in bar:
            network.train()
            total, count = 0.0, 0
            for mels, _ in stream_segments(shard, train_rows, rng):
                vectors = self._vectors(mels, device)
                order = torch.randperm(len(vectors), generator=generator).to(device)
                for start in range(0, len(order), cfg.batch_size):
                    batch = vectors[order[start:start + cfg.batch_size]]
                    if len(batch) < 2:  # BatchNorm needs two samples
                        continue
                    loss = loss_fn(network(batch), batch)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(batch)
                    count += len(batch)
            record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
            if len(val_rows):
                record["val_loss"] = float(np.mean(self._segment_errors(network, shard, val_rows, device)))
            self.history_.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        self.network_ = network.cpu().eval()
        self.mahalanobis_ = self._fit_mahalanobis(shard, train_rows, rng)

    @torch.no_grad()
    def _segment_errors(self, network: nn.Module, shard: Shard, rows: np.ndarray,
                        device: torch.device) -> np.ndarray:
        """Mean squared reconstruction error per segment."""
        network.eval()
        out = []
        for mels, _ in iterate_in_order(shard, rows):
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
        errors, domains = [], []
        for mels, seg_rows in iterate_in_order(shard, np.sort(np.concatenate(chosen))):
            vectors = self._vectors(mels, torch.device("cpu"))
            errors.append(per_dim_error(vectors, self.network_(vectors)).numpy())
            domains.append(np.repeat(domain_of_clip[clip_of_row[seg_rows]], n_vectors_per_segment))
        return MahalanobisScorer().fit(np.concatenate(errors), np.concatenate(domains))

    @torch.no_grad()
    def _score_rows(self, shard: Shard, rows: np.ndarray, device: torch.device) -> np.ndarray:
        network = self.network_.to(device).eval()
        out = []
        for mels, _ in iterate_in_order(shard, rows):
            vectors = self._vectors(mels, device)
            if self.config.score == "mse":
                per_vector = ((network(vectors) - vectors) ** 2).mean(dim=1).cpu().numpy()
            else:
                per_vector = self.mahalanobis_.score(per_dim_error(vectors, network(vectors)).cpu().numpy())
            out.append(per_vector.reshape(len(mels), -1).mean(axis=1))
        return np.concatenate(out) if out else np.zeros(0)

    def _state(self) -> dict[str, Any]:
        maha = self.mahalanobis_.state_dict()
        return {
            "network": self.network_.state_dict(),
            "mahalanobis": {k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                            for k, v in maha.items() if k != "domains"},
            "mahalanobis_domains": [str(d) for d in maha["domains"]],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        n_mels = int(self.feature_config_["n_mels"])
        self.network_ = self._build(n_mels)
        self.network_.load_state_dict(state["network"])
        self.network_.eval()
        maha = {k: v.numpy() for k, v in state["mahalanobis"].items()}
        maha["domains"] = np.asarray(state["mahalanobis_domains"])
        self.mahalanobis_ = MahalanobisScorer.from_state(maha)

    def with_score(self, score: str) -> AutoencoderDetector:
        """The same fitted network scored another way (both modes are fitted by `fit`)."""
        from dataclasses import replace

        other = AutoencoderDetector(replace(self.config, score=score))
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k != "config"})
        other.thresholds_ = {}
        return other
