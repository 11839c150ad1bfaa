"""Reading one wav file into mono int16 at the target sample rate, saying what was done to it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torchaudio

from asd.features import FeatureConfig


class BadAudio(ValueError):
    """A file that cannot be used as a clip (unreadable, empty, not audio)."""


@dataclass
class Clip:
    """A decoded clip: mono int16 samples at the configured rate, and notes on any conversion."""

    samples: np.ndarray
    original_sample_rate: int
    original_channels: int
    notes: list[str] = field(default_factory=list)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, rounding and clipping (only used after resampling or mixing)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def read_clip(path: str, config: FeatureConfig) -> Clip:
    """Decode `path`, pick or mix channels per `config.channel`, resample to `config.sample_rate`.

    16-bit mono files at the right rate pass through bit-exactly. Raises `BadAudio` with a readable
    reason for files that cannot be used.
    """
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types for non-audio or truncated headers
        raise BadAudio(f"unreadable audio ({type(err).__name__}: {err})") from err
    if info.frames == 0:
        raise BadAudio("empty audio file (0 samples)")
    notes: list[str] = []
    exact_int16 = info.subtype == "PCM_16"
    try:
        data, rate = sf.read(path, dtype="int16" if exact_int16 else "float32", always_2d=True)
    except Exception as err:
        raise BadAudio(f"undecodable audio ({type(err).__name__}: {err})") from err
    if len(data) == 0:
        raise BadAudio("empty audio file (0 samples)")
    channels = data.shape[1]
    if channels > 1:
        if config.channel == "mean":
            mono = data.astype(np.float32).mean(axis=1)
            data_mono = _to_int16(mono / 32768.0) if exact_int16 else mono
            notes.append(f"{channels}ch->mean")
        else:
            index = 0 if config.channel == "left" else 1
            data_mono = data[:, index]
            notes.append(f"{channels}ch->{config.channel}")
    else:
        data_mono = data[:, 0]
    if not exact_int16:
        notes.append(f"converted from {info.subtype}")
    if rate != config.sample_rate:
        as_float = data_mono.astype(np.float32) / (32768.0 if data_mono.dtype == np.int16 else 1.0)
        resampled = torchaudio.functional.resample(torch.from_numpy(as_float), rate, config.sample_rate)
        samples = _to_int16(resampled.numpy())
        notes.append(f"resampled {rate}->{config.sample_rate}")
    elif data_mono.dtype == np.int16:
        samples = np.ascontiguousarray(data_mono)
    else:
        samples = _to_int16(data_mono)
    return Clip(samples=samples, original_sample_rate=rate, original_channels=channels, notes=notes)
