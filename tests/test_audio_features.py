"""Decoding one wav (channels, rates, sample formats, bad files), segmenting, and the log-mel frontend."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from asd.cache.audio import BadAudio, read_clip
from asd.cache.features import (
    FeatureConfig,
    clip_log_mel,
    cut_segments,
    first_frames,
    log_mel,
    segment_features,
    segment_starts,
)
from conftest import RATE, tone_noise, write_wav

CFG = FeatureConfig()


def test_pcm16_mono_passes_through_bit_exactly(tmp_path: Path) -> None:
    written = write_wav(tmp_path / "a.wav", seconds=2.0)
    clip = read_clip(str(tmp_path / "a.wav"), CFG)
    assert clip.samples.dtype == np.int16
    np.testing.assert_array_equal(clip.samples, written)
    assert (clip.original_sample_rate, clip.original_channels, clip.notes) == (RATE, 1, [])


@pytest.mark.parametrize("channel", ["left", "right"])
def test_stereo_picks_the_configured_channel(tmp_path: Path, channel: str) -> None:
    written = write_wav(tmp_path / "st.wav", seconds=1.5, channels=2)
    assert not np.array_equal(written[:, 0], written[:, 1])
    clip = read_clip(str(tmp_path / "st.wav"), FeatureConfig(channel=channel))
    np.testing.assert_array_equal(clip.samples, written[:, 0 if channel == "left" else 1])
    assert clip.samples.flags.c_contiguous
    assert clip.original_channels == 2 and clip.notes == [f"2ch->{channel}"]


def test_stereo_mean_mixes_both_channels(tmp_path: Path) -> None:
    written = write_wav(tmp_path / "st.wav", seconds=1.0, channels=2)
    clip = read_clip(str(tmp_path / "st.wav"), FeatureConfig(channel="mean"))
    expected = written.astype(np.float64).mean(axis=1)
    assert np.abs(clip.samples - expected).max() <= 1.0
    assert clip.notes == ["2ch->mean"]


def test_44k1_is_resampled_to_16k_keeping_the_pitch(tmp_path: Path) -> None:
    write_wav(tmp_path / "hi.wav", seconds=2.0, rate=44100, freq=1000.0)
    clip = read_clip(str(tmp_path / "hi.wav"), CFG)
    assert abs(len(clip.samples) - 2 * RATE) <= 1
    assert clip.original_sample_rate == 44100 and clip.notes == ["resampled 44100->16000"]
    spectrum = np.abs(np.fft.rfft(clip.samples.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * RATE / len(clip.samples)
    assert abs(peak_hz - 1000.0) < 2.0


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_24", "PCM_32"])
def test_other_sample_formats_become_int16_with_a_note(tmp_path: Path, subtype: str) -> None:
    written = write_wav(tmp_path / "f.wav", seconds=1.0, subtype=subtype)
    clip = read_clip(str(tmp_path / "f.wav"), CFG)
    assert clip.samples.dtype == np.int16
    assert np.abs(clip.samples.astype(np.float64) - written * 32768.0).max() <= 1.0
    assert clip.notes == [f"converted from {subtype}"]


def test_stereo_float_at_another_rate_gets_every_note(tmp_path: Path) -> None:
    write_wav(tmp_path / "x.wav", seconds=1.0, rate=48000, channels=2, subtype="FLOAT")
    clip = read_clip(str(tmp_path / "x.wav"), FeatureConfig(channel="right"))
    assert clip.notes == ["2ch->right", "converted from FLOAT", "resampled 48000->16000"]
    assert abs(len(clip.samples) - RATE) <= 1


def test_corrupt_file_is_bad_audio(tmp_path: Path) -> None:
    path = tmp_path / "section_00_source_train_normal_0001_x.wav"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(BadAudio, match="unreadable audio"):
        read_clip(str(path), CFG)


def test_zero_byte_file_is_bad_audio(tmp_path: Path) -> None:
    (tmp_path / "z.wav").write_bytes(b"")
    with pytest.raises(BadAudio, match="unreadable audio"):
        read_clip(str(tmp_path / "z.wav"), CFG)


def test_wav_with_no_frames_is_bad_audio(tmp_path: Path) -> None:
    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.int16), RATE, subtype="PCM_16")
    with pytest.raises(BadAudio, match="empty audio file"):
        read_clip(str(tmp_path / "e.wav"), CFG)


# 2.5 s at 16 kHz = 40000 samples: two whole segments and half a segment left over.
@pytest.mark.parametrize(("tail", "starts", "padded"), [
    ("last", [0, 16000, 24000], False),
    ("pad", [0, 16000, 32000], True),
    ("drop", [0, 16000], False),
])
def test_tail_policies(tail: str, starts: list[int], padded: bool) -> None:
    got, got_padded = segment_starts(40000, FeatureConfig(tail=tail))
    assert got.tolist() == starts and got_padded is padded


@pytest.mark.parametrize("tail", ["last", "pad", "drop"])
def test_exact_multiple_and_short_clips_ignore_the_tail_policy(tail: str) -> None:
    config = FeatureConfig(tail=tail)
    assert segment_starts(48000, config)[0].tolist() == [0, 16000, 32000]
    one, one_padded = segment_starts(16000, config)
    assert one.tolist() == [0] and not one_padded
    starts, padded = segment_starts(5000, config)
    assert starts.tolist() == [0] and padded


def test_overlapping_hop() -> None:
    starts, padded = segment_starts(40000, FeatureConfig(hop_seconds=0.5))
    assert starts.tolist() == [0, 8000, 16000, 24000] and not padded


def test_cut_segments_copies_the_right_samples_and_zero_pads() -> None:
    samples = np.arange(40000, dtype=np.int64).astype(np.int16)
    waves, starts, padded = cut_segments(samples, FeatureConfig(tail="pad"))
    assert waves.shape == (3, 16000) and waves.dtype == np.int16 and padded
    for wave, start in zip(waves, starts, strict=True):
        piece = samples[start:start + 16000]
        np.testing.assert_array_equal(wave[:len(piece)], piece)
        assert not wave[len(piece):].any()
    short, _, short_padded = cut_segments(samples[:100], CFG)
    assert short.shape == (1, 16000) and short_padded
    np.testing.assert_array_equal(short[0, :100], samples[:100])


def test_log_mel_shape_scale_and_silence() -> None:
    waves = np.zeros((3, CFG.segment_samples), dtype=np.int16)
    mels = log_mel(waves, CFG)
    assert mels.shape == (3, CFG.n_mels, CFG.n_frames) == (3, 128, 32) and mels.dtype == np.float32
    # silence sits at the floor set by eps: 10 * log10(eps) dB for power 2
    np.testing.assert_allclose(mels, 10 * np.log10(sys.float_info.epsilon), rtol=1e-6)
    assert log_mel(waves[:1], FeatureConfig(n_mels=64, hop_length=256)).shape == (1, 64, 63)


def test_log_mel_puts_a_tone_in_its_mel_band() -> None:
    t = np.arange(CFG.segment_samples) / RATE
    wave = np.round(0.5 * 32767 * np.sin(2 * np.pi * 2000.0 * t)).astype(np.int16)[None]
    mel = log_mel(wave, CFG)[0].mean(axis=1)
    # the band whose Slaney triangle weighs 2 kHz the most
    banks = torchaudio.functional.melscale_fbanks(CFG.n_fft // 2 + 1, 0.0, RATE / 2, CFG.n_mels, RATE,
                                                  norm="slaney", mel_scale="slaney")
    expected_band = int(torch.argmax(banks[round(2000.0 * CFG.n_fft / RATE)]))
    assert abs(int(np.argmax(mel)) - expected_band) <= 1
    # power dB: a full-scale-ish tone is far above the silence floor
    assert mel.max() - np.median(mel) > 40


def test_feature_config_validation() -> None:
    with pytest.raises(ValueError, match="tail"):
        FeatureConfig(tail="wrap")
    with pytest.raises(ValueError, match="channel"):
        FeatureConfig(channel="both")
    with pytest.raises(ValueError, match="positive"):
        FeatureConfig(hop_seconds=0)
    with pytest.raises(ValueError, match="shorter than n_fft"):
        FeatureConfig(segment_seconds=0.05)


def test_fingerprint_follows_every_setting() -> None:
    base = FeatureConfig()
    assert base.fingerprint() == FeatureConfig().fingerprint()
    changed = [FeatureConfig(n_mels=64), FeatureConfig(tail="pad"), FeatureConfig(channel="right"),
               FeatureConfig(hop_seconds=0.5), FeatureConfig(f_max=8000.0), FeatureConfig(mel_norm=None)]
    prints = {c.fingerprint() for c in changed}
    assert len(prints) == len(changed) and base.fingerprint() not in prints
    assert FeatureConfig(n_mels=64).differences(base.to_dict()) == {"n_mels": (128, 64)}


# ---------------------------------------------------------------------------------------------------
# whole-clip log-mel, cut per segment (schema 2)


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    return np.round(tone_noise(seconds, seed=seed) * 32767).astype(np.int16)


@pytest.mark.parametrize(("seconds", "tail", "hop_seconds"), [
    (10.0, "last", 1.0), (2.5, "last", 1.0), (2.5, "pad", 1.0), (3.3, "drop", 0.5), (0.4, "last", 1.0)])
def test_segment_logmel_is_the_whole_clip_logmel_cut(seconds: float, tail: str, hop_seconds: float) -> None:
    config = FeatureConfig(tail=tail, hop_seconds=hop_seconds)
    samples = _clip(seconds)
    feats = segment_features(samples, config)
    padded = samples if feats.padded_to is None else np.concatenate(
        [samples, np.zeros(feats.padded_to - len(samples), np.int16)])
    whole = clip_log_mel(padded, config)
    assert whole.shape == (config.n_mels, 1 + len(padded) // config.hop_length)
    assert feats.logmels.shape == (len(feats.starts), config.n_mels, config.n_frames)
    np.testing.assert_array_equal(feats.first_frames, first_frames(feats.starts, len(padded), config))
    for k, frame in enumerate(feats.first_frames):
        np.testing.assert_array_equal(feats.logmels[k], whole[:, frame:frame + config.n_frames])
        np.testing.assert_array_equal(feats.waves[k], padded[feats.starts[k]:feats.starts[k] + 16000])


def test_first_frame_rule() -> None:
    # hop 512: segment starts 0, 16000 (frame 31.25 -> 31), 32000 (62.5 -> 63, halves up), 64000 (125);
    # a 2.5 s clip's "last" segment starts at 24000 (46.875 -> 47) and fits (frames 47..78 of 0..78);
    # a 40400-sample clip's last segment (24400 -> 48) would run past frame 78, so it takes 47..78.
    got = first_frames(np.array([0, 16000, 32000, 64000]), 80000, CFG)
    assert got.tolist() == [0, 31, 63, 125]
    assert first_frames(np.array([24000]), 40000, CFG).tolist() == [47]
    assert first_frames(np.array([24400]), 40400, CFG).tolist() == [47]
    centres = first_frames(np.arange(0, 144001, 16000), 160000, CFG) * CFG.hop_length
    assert np.abs(centres - np.arange(0, 144001, 16000)).max() <= CFG.hop_length // 2


def test_interior_segments_differ_from_per_segment_only_at_their_edges() -> None:
    """Where a segment starts on the frame grid (s % 512 == 0: segments 0 and 4 of a 10 s clip), its
    frames are the per-segment ones except those whose window crosses a segment edge into the clip
    (frame 0 has half its window before the start, frame 31 after the end); the clip's own start keeps
    the per-segment padding."""
    samples = _clip(10.0, seed=3)
    feats = segment_features(samples, CFG)
    old = log_mel(feats.waves, CFG)  # schema 1: every segment on its own, padded at both edges
    for k in (0, 4):
        assert feats.starts[k] % CFG.hop_length == 0
        np.testing.assert_allclose(feats.logmels[k][:, 1:31], old[k][:, 1:31], rtol=0, atol=1e-3)
        assert np.abs(feats.logmels[k][:, 31] - old[k][:, 31]).max() > 1.0  # real audio, not padding
    np.testing.assert_allclose(feats.logmels[0][:, 0], old[0][:, 0], rtol=0, atol=1e-3)  # the clip's start
    assert np.abs(feats.logmels[4][:, 0] - old[4][:, 0]).max() > 1.0
