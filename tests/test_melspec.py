"""The numpy log-mel (asd.cache.melspec) against torchaudio's, and data_prep running without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from asd.cache.features import FeatureConfig, log_mel
from asd.cache.melspec import mel_filter_blocks, mel_filterbank, mel_power, one_thread_each
from conftest import PROJECT_ROOT, build_dataset, write_wav


def _torchaudio_log_mel(waves_int16: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The reference: what features.py computed with torchaudio before asd.cache.melspec (schema 2)."""
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        f_min=config.f_min, f_max=config.f_max, n_mels=config.n_mels, power=config.power,
        mel_scale=config.mel_scale, norm=config.mel_norm)
    with torch.no_grad():
        mel = transform(torch.from_numpy(waves_int16.astype(np.float32) / 32768.0))
        return ((20.0 / config.power) * torch.log10(mel + sys.float_info.epsilon)).numpy()


CONFIGS = {
    "default": FeatureConfig(),
    "64 mels, hop 256, n_fft 512": FeatureConfig(n_mels=64, hop_length=256, n_fft=512),
    "htk, no norm, 50-7000 Hz": FeatureConfig(mel_scale="htk", mel_norm=None, f_min=50.0, f_max=7000.0),
    "magnitude (power 1)": FeatureConfig(power=1.0),
    "40 mels (not a multiple of the 16-band blocks)": FeatureConfig(n_mels=40),
}
# n_fft 256 gives 129 bins for 128 mels: some filters are all zeros (torchaudio warns) inside the blocks.
# Only for the banded product: against torchaudio this narrow a filterbank differs by ~2e-3 dB
# (float32 vs float64 construction), block by block or dense alike.
BANDED_CONFIGS = {**CONFIGS, "128 mels over 129 bins (some filters empty)": FeatureConfig(n_fft=256, hop_length=128)}


@pytest.mark.parametrize("name", list(BANDED_CONFIGS))
def test_banded_mel_product_equals_the_dense_one(name: str) -> None:
    c = BANDED_CONFIGS[name]
    bank = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale, c.mel_norm)
    blocks = mel_filter_blocks(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale, c.mel_norm)
    assert [b[0] for b in blocks] == list(range(0, c.n_mels, 16)) and blocks[-1][1] == c.n_mels
    for first, end, lo, hi, _ in blocks:  # nothing non-zero is left out of a block
        outside = np.delete(bank[:, first:end], np.s_[lo:hi], axis=0)
        assert not outside.any()
    rng = np.random.default_rng(3)
    waves = rng.standard_normal((2, 16000)).astype(np.float32)
    ours = mel_power(waves, c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.power, c.f_min, c.f_max,
                     c.mel_scale, c.mel_norm)
    spectrum = np.abs(np.fft.rfft(_frames(waves, c.n_fft, c.hop_length) * np.hanning(c.n_fft + 1)[:-1]))
    dense = (spectrum ** c.power) @ bank.astype(np.float64)
    np.testing.assert_allclose(ours.transpose(0, 2, 1), dense, rtol=2e-4, atol=1e-6 * dense.max())


def _frames(waves: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred frames with reflect padding, in float64: the textbook STFT framing."""
    padded = np.pad(waves.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    starts = np.arange(0, padded.shape[1] - n_fft + 1, hop)
    return np.stack([padded[:, s:s + n_fft] for s in starts], axis=1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_filterbank_equals_torchaudio(name: str) -> None:
    c = CONFIGS[name]
    ours = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, c.mel_scale, c.mel_norm)
    theirs = torchaudio.functional.melscale_fbanks(
        c.n_fft // 2 + 1, c.f_min, c.f_max or c.sample_rate / 2, c.n_mels, c.sample_rate,
        norm=c.mel_norm, mel_scale=c.mel_scale).numpy()
    assert ours.shape == theirs.shape
    # torchaudio builds it in float32 (slopes of up to 8 kHz over ~60 Hz widths), ours in float64
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=3e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_mel_equals_torchaudio_on_random_int16(name: str) -> None:
    """Random int16 audio (full scale, and quiet: +-3 LSB), 10 s clips and 1 s segments: the largest
    difference measured is ~2e-4 dB (float32 rounding; the values span ~100 dB)."""
    config = CONFIGS[name]
    rng = np.random.default_rng(7)
    loud = rng.integers(-32768, 32768, size=(2, 160000), dtype=np.int16)
    quiet = rng.integers(-3, 4, size=(2, 16000), dtype=np.int16)
    for waves in (loud, quiet):
        ours, theirs = log_mel(waves, config), _torchaudio_log_mel(waves, config)
        assert ours.shape == theirs.shape and ours.dtype == np.float32 and ours.flags.c_contiguous
        assert np.abs(ours - theirs).max() < 1e-3


def test_log_mel_of_a_tone_is_within_float32_noise() -> None:
    """A tone with little noise (sd 3 LSB): its far-away bands are ~100 dB below the peak, where float32
    rounding shows most. Measured: ours 0.020 dB from a float64 reference at worst, torchaudio's float32
    0.012 dB, ours vs torchaudio 0.019 dB; the median difference ~5e-4 dB."""
    t = np.arange(160000) / 16000
    rng = np.random.default_rng(1)
    wave = np.round(0.3 * 32767 * np.sin(2 * np.pi * 1000 * t) + rng.normal(0, 3, len(t))).astype(np.int16)
    config = FeatureConfig()
    ours = log_mel(wave[None], config)
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128, mel_scale="slaney", norm="slaney").double()
    with torch.no_grad():
        exact = 10 * torch.log10(transform(torch.from_numpy(wave / 32768.0)[None]) + sys.float_info.epsilon)
    assert np.abs(ours - exact.numpy()).max() < 0.05
    diff = np.abs(ours - _torchaudio_log_mel(wave[None], config))
    assert diff.max() < 0.05 and np.median(diff) < 2e-3


def test_one_thread_each_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    with one_thread_each():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


_PREP_AND_REPORT = """
import sys
from asd.cli.prep import prep_command
try:
    prep_command.main(args=sys.argv[1:], standalone_mode=False)
finally:
    print("TORCH LOADED" if "torch" in sys.modules else "NO TORCH")
"""


def _prep_in_subprocess(raw: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PREP_AND_REPORT, "--raw-dir", str(raw), "--out-dir", str(out), "--jobs", "2",
         "--quiet"], capture_output=True, text=True, cwd=PROJECT_ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "source")})


def test_data_prep_never_imports_torch_for_16k_audio(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (3, 2)}, seconds=1.5).parent
    done = _prep_in_subprocess(raw, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "5 clips -> " in done.stdout
    assert done.stdout.strip().endswith("NO TORCH")


def test_data_prep_imports_torch_only_to_resample(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 0)}, seconds=1.5).parent
    write_wav(raw / "ds" / "fan" / "train" / "section_00_source_train_normal_0009_x_1.wav", seconds=1.5,
              rate=44100)
    done = _prep_in_subprocess(raw, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "3 clips -> " in done.stdout and "resampled" in done.stdout
    assert done.stdout.strip().endswith("TORCH LOADED")
