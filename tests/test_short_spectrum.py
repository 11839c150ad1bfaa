"""The gmm's short-time spectrum views: features from the cached waveform, and what they add."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asd.cache.build import PrepConfig, run_prep
from asd.cache.shard import Shard
from asd.models.short_spectrum import POWER_FLOOR, pooled_spectra
from conftest import dcase2024_name, write_wav


def direct_log_spectrum(samples: np.ndarray, n_fft: int) -> np.ndarray:
    """``[n_fft // 2 + 1, frames]`` dB, written out here with numpy: centred frames (reflect padding of
    ``n_fft // 2``), hop ``n_fft // 4``, periodic Hann window."""
    padded = np.pad(samples, n_fft // 2, mode="reflect")
    hop = n_fft // 4
    starts = np.arange(0, len(padded) - n_fft + 1, hop)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[s:s + n_fft] * window for s in starts])
    return 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + POWER_FLOOR).T


def test_pooled_spectra_equal_a_direct_stft_of_the_wav_files(tmp_path: Path) -> None:
    """Rebuilt from the cache's 1-second segments (a 2.3 s clip ends with an end-aligned segment), each
    clip's spectrum is that of its whole wav file, pooled per frequency bin."""
    raw = tmp_path / "raw" / "fan"
    lengths = {1: 2.0, 2: 2.3, 3: 3.0}
    for number, seconds in lengths.items():
        write_wav(raw / "train" / dcase2024_name(0, "source", "train", "normal", number), seconds=seconds,
                  seed=number, freq=300.0 * number)
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "processed"), jobs=1),
             show_progress=False)
    shard = Shard(next((tmp_path / "processed").rglob("train.h5")))
    clips = shard.clips.index.to_numpy()[::-1]  # any order: the rows follow the order asked for
    features = pooled_spectra(shard, clips, n_fft=256, rs=(0.0, 1.0))
    assert features.shape == (3, 2, 129)
    for row, clip in zip(features, clips, strict=True):
        samples, _ = sf.read(raw / "train" / shard.clips.at[clip, "file_name"], dtype="int16")
        expected = direct_log_spectrum(samples.astype(np.float64) / 32768, n_fft=256)
        np.testing.assert_allclose(row[0], expected.max(axis=1), atol=0.02)  # r = 0: the maximum
        np.testing.assert_allclose(row[1], expected.mean(axis=1), atol=0.02)  # r = 1: the mean
    # the maximum alone takes a shortcut (no sort, one logarithm per bin): the same figures
    np.testing.assert_allclose(pooled_spectra(shard, clips, n_fft=256, rs=(0.0,))[:, 0], features[:, 0], atol=1e-3)


def test_a_clip_shorter_than_one_frame_is_repeated_to_fill_it(tmp_path: Path) -> None:
    """data_prep keeps a 10 ms clip (zero-padded to one segment, with a note); its spectrum must not fail."""
    raw = tmp_path / "raw" / "fan"
    short = write_wav(raw / "train" / dcase2024_name(0, "source", "train", "normal", 1), seconds=0.01)
    write_wav(raw / "train" / dcase2024_name(0, "source", "train", "normal", 2), seconds=1.0, seed=2)
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "processed"), jobs=1),
             show_progress=False)
    shard = Shard(next((tmp_path / "processed").rglob("train.h5")))
    assert sorted(shard.clips["n_samples"]) == [len(short), 16000]
    features = pooled_spectra(shard, shard.clips.index.to_numpy(), n_fft=512, rs=(0.0,))
    assert features.shape == (2, 1, 257) and np.isfinite(features).all()
    first = int(np.flatnonzero(shard.clips["n_samples"].to_numpy() == len(short))[0])
    repeated = np.resize(short.astype(np.float64) / 32768, 512)
    np.testing.assert_allclose(features[first, 0], direct_log_spectrum(repeated, 512).max(axis=1), atol=0.02)


@pytest.mark.parametrize("value", [(0.0, 1.5), 8])
def test_spectrum_settings_are_validated(value) -> None:
    from asd.models.gmm import GmmDetectorConfig

    with pytest.raises(ValueError, match="spectrum"):
        if isinstance(value, tuple):
            GmmDetectorConfig(spectrum_poolings=value)
        else:
            GmmDetectorConfig(spectrum_n_fft=value)
