"""Segmenting and feature settings, their fingerprint, and the log-mel frontend.

Everything that changes what a shard holds lives in `FeatureConfig`; its fingerprint decides whether a
cached shard may be reused and whether a trained model may score a shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

# Bump when the shard layout or the meaning of a stored value changes: old caches are then refused.
# 2: log-mel computed over the whole clip and cut per segment (was: per segment, padded at every edge).
# 3: every row's checksum and every table's digest stored (asd.cache.integrity), checked by every reader.
# Not bumped when the log-mel moved from torchaudio to numpy (asd.cache.melspec): the same transform, equal
# within float32 rounding (tests/test_melspec.py: <= 1e-3 dB on random int16 audio), so caches stay valid.
SCHEMA_VERSION = 3

TAIL_POLICIES = ("last", "pad", "drop")
CHANNEL_POLICIES = ("left", "right", "mean")


@dataclass(frozen=True)
class FeatureConfig:
    """How clips become segments and segments become log-mels (SPEC §3, DCASE baseline defaults)."""

    sample_rate: int = 16000
    segment_seconds: float = 1.0
    hop_seconds: float = 1.0
    # What to do with the part of a clip after the last whole segment: "last" adds one segment aligned
    # to the clip's end (no audio lost, nothing invented), "pad" zero-pads a final segment, "drop"
    # discards it. Clips shorter than one segment are always zero-padded to one segment and noted.
    tail: str = "last"
    # Stereo (DCASE 2026): left = near mic, as DCASE's own baseline reads it.
    channel: str = "left"
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    power: float = 2.0
    f_min: float = 0.0
    f_max: float | None = None
    # librosa's defaults, which the DCASE baseline uses: Slaney mel scale and area normalisation.
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"

    def __post_init__(self) -> None:
        if self.tail not in TAIL_POLICIES:
            raise ValueError(f"tail must be one of {TAIL_POLICIES}, not {self.tail!r}")
        if self.channel not in CHANNEL_POLICIES:
            raise ValueError(f"channel must be one of {CHANNEL_POLICIES}, not {self.channel!r}")
        if self.segment_seconds <= 0 or self.hop_seconds <= 0:
            raise ValueError("segment and hop lengths must be positive")
        if self.segment_samples < self.n_fft:
            raise ValueError(f"a segment ({self.segment_samples} samples) is shorter than n_fft ({self.n_fft})")

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Log-mel frames per segment (centred STFT, as librosa and torchaudio default to)."""
        return 1 + self.segment_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of every setting that changes shard content, plus the schema version."""
        payload = json.dumps({"schema_version": SCHEMA_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def differences(self, other: dict) -> dict[str, tuple]:
        """Settings that differ from another config's dict: {name: (theirs, ours)}."""
        ours = self.to_dict()
        keys = sorted(set(ours) | set(other))
        return {k: (other.get(k), ours.get(k)) for k in keys if other.get(k) != ours.get(k)}


def segment_starts(n_samples: int, config: FeatureConfig) -> tuple[np.ndarray, bool]:
    """Start samples of a clip's segments under the tail policy, and whether padding will be needed."""
    length, hop = config.segment_samples, config.hop_samples
    if n_samples <= length:
        return np.zeros(1, dtype=np.int64), n_samples < length
    starts = list(range(0, n_samples - length + 1, hop))
    covered = starts[-1] + length
    if covered < n_samples:
        if config.tail == "last":
            starts.append(n_samples - length)
        elif config.tail == "pad":
            starts.append(starts[-1] + hop)
            return np.asarray(starts, dtype=np.int64), True
    return np.asarray(starts, dtype=np.int64), False


def cut_segments(samples: np.ndarray, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut a mono int16 clip into `[n_segments, segment_samples]`, zero-padding where the policy says."""
    starts, padded = segment_starts(len(samples), config)
    length = config.segment_samples
    if padded:
        needed = int(starts[-1]) + length
        samples = np.concatenate([samples, np.zeros(needed - len(samples), dtype=samples.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(samples, length)
    return np.ascontiguousarray(windows[starts]), starts, padded


def log_mel(segments_int16: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Log-mel spectrograms `[n, n_mels, frames]` (float32) of int16 signals `[n, samples]`, each on its own
    (centred STFT: frame f is centred at sample f * hop_length, reflect-padded at both ends).

    Same scale as the DCASE baseline: `(20 / power) * log10(mel + eps)`, i.e. decibels for power 2.
    Computed in numpy (`asd.cache.melspec`), equal to torchaudio's `MelSpectrogram` within float32 rounding.
    """
    from asd.cache.melspec import log_mel_numpy

    return log_mel_numpy(segments_int16, config)


def clip_log_mel(samples_int16: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The log-mel of a whole clip, `[n_mels, 1 + len // hop_length]`: frame f is centred at sample
    f * hop_length; only the clip's true start and end are padded (reflect)."""
    return log_mel(np.asarray(samples_int16)[None], config)[0]


def first_frames(starts: np.ndarray, n_samples: int, config: FeatureConfig) -> np.ndarray:
    """Index of each segment's first frame in the whole-clip log-mel of a clip of `n_samples` samples.

    A segment starting at sample s takes the `n_frames` consecutive frames from the frame whose centre is
    nearest to s (round(s / hop_length), halves rounded up), so its frame centres lie within half a frame
    hop of the segment's own 0, hop, 2 hop, ... grid; where that would run past the clip's last frame
    (a tail segment aligned to the clip's end), it takes the last `n_frames` frames instead. When s is a
    multiple of hop_length the frames are exactly those a per-segment STFT would centre, with real audio
    instead of padding at the segment's edges.
    """
    hop = config.hop_length
    total = 1 + n_samples // hop
    first = (np.asarray(starts, dtype=np.int64) + hop // 2) // hop
    return np.minimum(first, total - config.n_frames)


@dataclass
class SegmentFeatures:
    """One clip cut into segments: waveforms, their log-mels and where each segment starts."""

    waves: np.ndarray  # int16 [n, segment_samples]
    logmels: np.ndarray  # float32 [n, n_mels, n_frames]
    starts: np.ndarray  # int64 [n]: start sample in the clip
    first_frames: np.ndarray  # int64 [n]: first frame in the whole-clip log-mel
    padded_to: int | None  # samples after zero-padding, None when nothing was padded


def segment_features(samples: np.ndarray, config: FeatureConfig) -> SegmentFeatures:
    """Cut a mono int16 clip into segments and give each its frames of the whole-clip log-mel.

    Zero-padding (clips shorter than a segment; the "pad" tail policy) comes first, so the log-mel is
    computed over the padded clip. The one place data_prep and `score` turn samples into features.
    """
    starts, padded = segment_starts(len(samples), config)
    if padded:
        needed = int(starts[-1]) + config.segment_samples
        samples = np.concatenate([samples, np.zeros(needed - len(samples), dtype=samples.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(samples, config.segment_samples)
    waves = np.ascontiguousarray(windows[starts])
    whole = clip_log_mel(samples, config)
    frames = first_frames(starts, len(samples), config)
    # [n_mels, total] -> [n, n_mels, n_frames] by strided views, one copy at the end
    cut = np.lib.stride_tricks.sliding_window_view(whole, config.n_frames, axis=1)[:, frames]
    logmels = np.ascontiguousarray(cut.transpose(1, 0, 2))
    return SegmentFeatures(waves, logmels, starts, frames, len(samples) if padded else None)
