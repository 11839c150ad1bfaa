"""The two-branch learned detector: the recipe of the best from-scratch DCASE systems (SPEC §6).

* **Input:** each clip's whole waveform, rebuilt from the cache's int16 segments
  (:func:`~asd.models.clip_crops.load_clip_waveforms`), wrapped or cut to the training clips' median length.
* **Network** (:mod:`asd.models.twobranch_net`): a branch on the full-resolution magnitude spectrum of the
  whole clip and a branch on its log-magnitude STFT.
* **Training** (:mod:`asd.models.twobranch_train`): a sub-cluster AdaCos head over the free auxiliary classes
  (machine type x section x attribute x domain), mixup of waveforms, feature exchange between the branches.
  With ``scope="dataset"`` (the default) the networks learn from every machine type of the dataset.
* **Scoring and calibration** (:class:`~asd.models.embedding_knn.EmbeddingKnnDetector`): ``n_networks``
  networks on complementary folds (a seed ensemble whose members never saw one fold each); cosine distance
  to k-means centres of the source embeddings and to every target clip, standardised per section and
  domain on out-of-fold distances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from asd.cache.shard import Shard
from asd.models.clip_crops import load_clip_waveforms
from asd.models.embedding_knn import EmbeddingKnnDetector
from asd.models.twobranch_net import TwoBranchNet, TwoBranchNetConfig
from asd.models.twobranch_train import INT16_SCALE, train_two_branch

SCOPES = ("dataset", "machine")
SCORE_BATCH_CLIPS = 32  # clips embedded at once: ~0.3 GB of activations for 10 s clips


@dataclass(frozen=True)
class TwoBranchDetectorConfig:
    """Settings of :class:`TwoBranchDetector` (defaults sized for a 2-core CPU)."""

    branch_dim: int = 128  # each branch's embedding; the clip's is twice as long
    n_subclusters: int = 16
    feature_exchange: bool = True
    mixup_alpha: float = 1.0  # Beta(alpha, alpha) mixing weights; 0 disables mixup
    balance_power: float = 0.5  # class loss weights (mean count / count) ** power
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    stft_crop_frames: int = 126  # the STFT branch learns from random ~4 s crops (0: the whole clip)
    n_source_centroids: int = 16
    # The sparse target bank (asd.models.knn_domain; measured by bench/bench_knn_variants.py): synthetic
    # entries per target clip on segments between target clips, and distances divided by each entry's
    # local scale.
    target_mixup: int = 0
    density_scaling: bool = False
    n_networks: int = 2  # networks on complementary folds; the test score is their mean
    min_clips_for_sd: int = 20  # the ten DCASE target clips borrow the source's relative spread (see
    relative_spread: bool = True  # EmbeddingDetectorConfig)
    scope: str = "dataset"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {self.scope!r}")
        for name in ("branch_dim", "n_subclusters", "epochs", "batch_size", "n_source_centroids"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_networks < 2:
            raise ValueError(f"n_networks must be >= 2 (each clip needs a network that never saw it), "
                             f"got {self.n_networks}")
        if self.stft_crop_frames < 0 or 0 < self.stft_crop_frames < 8:
            raise ValueError(f"stft_crop_frames must be 0 (whole clip) or at least 8, got {self.stft_crop_frames}")


class TwoBranchDetector(EmbeddingKnnDetector):
    """Spectrum + STFT branches, sub-cluster AdaCos with feature exchange, domain-aware k-NN."""

    name = "twobranch"
    config_class = TwoBranchDetectorConfig

    def __init__(self, config: TwoBranchDetectorConfig = TwoBranchDetectorConfig()) -> None:
        super().__init__(config)

    def _train_fold(self, clips: list[tuple[Shard, np.ndarray]], labels: np.ndarray, n_classes: int,
                    fit_config, seed: int, device: torch.device, log, desc: str
                    ) -> tuple[TwoBranchNet, list[dict]]:
        lengths = np.concatenate([shard.clips["n_samples"].to_numpy()[indices] for shard, indices in clips])
        length = int(np.median(lengths))
        waveforms = np.concatenate([load_clip_waveforms(shard, indices, length) for shard, indices in clips])
        log(f"{desc}: {len(waveforms)} clips of {length} samples ({waveforms.nbytes / 2**20:.0f} MiB int16)")
        return train_two_branch(waveforms, np.asarray(labels, dtype=np.int64), n_classes, self.config,
                                fit_config.epochs or self.config.epochs, seed, device, log, desc)

    @torch.no_grad()
    def _embed(self, network: TwoBranchNet, shard: Shard, clip_indices: np.ndarray,
               device: torch.device) -> np.ndarray:
        network = network.to(device).eval()
        out = np.empty((len(clip_indices), 2 * network.config.branch_dim), dtype=np.float32)
        for first in range(0, len(clip_indices), SCORE_BATCH_CLIPS):
            part = clip_indices[first:first + SCORE_BATCH_CLIPS]
            waves = load_clip_waveforms(shard, part, network.config.clip_samples)
            x = torch.from_numpy(waves.astype(np.float32) * INT16_SCALE).to(device)
            out[first:first + len(part)] = network.embed(x).cpu().numpy()
        network.cpu()
        return out

    def _network_state(self, network: TwoBranchNet) -> dict[str, Any]:
        return {"shape": asdict(network.config), "weights": network.state_dict()}

    def _load_network(self, state: dict[str, Any]) -> TwoBranchNet:
        network = TwoBranchNet(TwoBranchNetConfig(**state["shape"]))
        network.load_state_dict(state["weights"])
        return network
