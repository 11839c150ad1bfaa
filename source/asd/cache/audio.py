"""Reading one wav file into mono int16 at the target sample rate, saying what was done to it.

The one decoder of the project: data_prep and `score` both call `read_clip`, so they accept exactly the
same files. The header is checked before anything is decoded (`probe`), so no header can make a reader
allocate more than a bounded amount of memory.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from asd.cache.features import FeatureConfig
from asd.errors import BadInput

MAX_CLIP_SECONDS = 600.0  # longer recordings are refused (cut them into clips): bounds decoding memory
MAX_CHANNELS = 32
# What one clip may decode to, frames x channels, whatever its format: ten minutes of stereo at 16 kHz
# (77 MB as float32). Checked from the header before anything is decoded, so a small compressed file
# (FLAC or Ogg under a .wav name) declaring an hour of 32 channels at 768 kHz is refused, not decoded:
# the decoder allocates all of a clip at once, and the clip is mixed and resampled whole after that.
MAX_DECODED_SAMPLES = int(MAX_CLIP_SECONDS) * 16000 * 2
RATE_RANGE = (1000, 768_000)  # sample rates outside this are not plausible audio


class BadAudio(BadInput, ValueError):
    """A file that cannot be used as a clip (unreadable, empty, not audio, implausible, not finite)."""


@dataclass(frozen=True)
class Probe:
    """What a file's header says, checked for plausibility, and what decoding it will give."""

    frames: int  # frames libsndfile will decode
    sample_rate: int
    channels: int
    subtype: str
    header_frames: int | None  # frames the wav data chunk declares, when it could be read

    def output_samples(self, config: FeatureConfig) -> int:
        """Samples of the decoded clip at `config.sample_rate` (torchaudio's resampler rounds up)."""
        if self.sample_rate == config.sample_rate:
            return self.frames
        gcd = math.gcd(self.sample_rate, config.sample_rate)
        return math.ceil(self.frames * (config.sample_rate // gcd) / (self.sample_rate // gcd))


@dataclass
class Clip:
    """A decoded clip: mono int16 samples at the configured rate, and notes on any conversion."""

    samples: np.ndarray
    original_sample_rate: int
    original_channels: int
    notes: list[str] = field(default_factory=list)


def _declared_wav_frames(path: str, channels: int) -> int | None:
    """Frames the RIFF/WAVE `data` chunk declares (None: not a plain RIFF wav, or no size to trust).
    Walks at most 64 chunk headers, so a hostile header cannot make it loop or allocate."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            for _ in range(64):
                header = handle.read(8)
                if len(header) < 8:
                    return None
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = handle.read(min(size, 16))
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                    handle.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
                elif chunk_id == b"data":
                    if size in (0, 0xFFFFFFFF) or not block_align:  # streaming placeholders
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def probe(path: str) -> Probe:
    """Read and check a file's header without decoding it. Raises `BadAudio` with the reason."""
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types for non-audio or truncated headers
        raise BadAudio(f"unreadable audio ({type(err).__name__}: {err})") from err
    if info.frames <= 0:
        raise BadAudio("empty audio file (0 samples)")
    if not RATE_RANGE[0] <= info.samplerate <= RATE_RANGE[1]:
        raise BadAudio(f"implausible sample rate {info.samplerate} Hz in the header "
                       f"(accepted {RATE_RANGE[0]}-{RATE_RANGE[1]})")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise BadAudio(f"implausible channel count {info.channels} in the header (accepted 1-{MAX_CHANNELS})")
    seconds = info.frames / info.samplerate
    if seconds > MAX_CLIP_SECONDS:
        raise BadAudio(f"too long: {seconds:.0f} s (limit {MAX_CLIP_SECONDS:.0f} s per clip; cut long "
                       "recordings into clips)")
    if info.frames * info.channels > MAX_DECODED_SAMPLES:
        raise BadAudio(f"too large to decode: the header declares {info.frames} frames x {info.channels} "
                       f"channels at {info.samplerate} Hz ({info.format}); the limit is {MAX_DECODED_SAMPLES} "
                       "samples per clip (10 minutes of stereo at 16 kHz): cut or downmix long recordings")
    return Probe(info.frames, info.samplerate, info.channels, info.subtype,
                 _declared_wav_frames(path, info.channels))


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, rounding and clipping (only used after resampling or mixing)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def read_clip(path: str, config: FeatureConfig) -> Clip:
    """Decode `path`, pick or mix channels per `config.channel`, resample to `config.sample_rate`.

    16-bit mono files at the right rate pass through bit-exactly. Raises `BadAudio` with a readable
    reason for files that cannot be used: unreadable, empty, implausible header, NaN or infinite
    samples. A data chunk shorter than its header declares is decoded as far as it goes, with a note.
    """
    head = probe(path)
    notes: list[str] = []
    exact_int16 = head.subtype == "PCM_16"
    try:
        data, rate = sf.read(path, dtype="int16" if exact_int16 else "float32", always_2d=True,
                             frames=head.frames)
    except Exception as err:
        raise BadAudio(f"undecodable audio ({type(err).__name__}: {err})") from err
    if len(data) == 0:
        raise BadAudio("empty audio file (0 samples)")
    if head.header_frames is not None and head.header_frames > len(data):
        notes.append(f"truncated: header declares {head.header_frames} frames, file holds {len(data)}")
    if not exact_int16:
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise BadAudio(f"{bad} NaN or infinite samples (of {data.size}) in float audio")
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
        notes.append(f"converted from {head.subtype}")
        over = int(np.count_nonzero(np.abs(data_mono) > 1.0))
        if over:
            notes.append(f"clipped {over} samples beyond full scale")
    if rate != config.sample_rate:
        import torch  # only resampling needs it
        import torchaudio

        as_float = data_mono.astype(np.float32) / (32768.0 if data_mono.dtype == np.int16 else 1.0)
        resampled = torchaudio.functional.resample(torch.from_numpy(as_float), rate, config.sample_rate)
        samples = _to_int16(resampled.numpy())
        notes.append(f"resampled {rate}->{config.sample_rate}")
    elif data_mono.dtype == np.int16:
        samples = np.ascontiguousarray(data_mono)
    else:
        samples = _to_int16(data_mono)
    return Clip(samples=samples, original_sample_rate=rate, original_channels=channels, notes=notes)
