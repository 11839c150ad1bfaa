"""Factory background, microphone character and near/far mic rendering, per domain.

The source and target domains differ not only in machine operating conditions (handled in the machine
generators) but in the recording environment: another factory hall (background spectrum, mains hum at 50
vs 60 Hz, a different distant machine, more frequent impacts, lower SNR) and another microphone (band
limits). This is what makes the target domain hard for detectors trained mostly on source data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.signal

from .signals import (
    Spectrum,
    add_events,
    burst_kernels,
    butter_sos,
    fft_convolve,
    poisson_times,
    power_law,
    resonance,
    slow_sine,
    time_axis,
)


@dataclass(frozen=True)
class Environment:
    """Recording conditions of one domain."""

    noise_exponent: float  # background power ~ 1/f^exponent
    hum_hz: float  # mains frequency of the plant
    distant_hz: tuple[float, float]  # fundamental range of a distant machine
    distant_level: float
    impact_rate_hz: float  # occasional impacts (tools, doors, parts dropped)
    vent_hz: float  # centre of a ventilation hum band
    snr_db: tuple[float, float]  # machine-to-background ratio range at the near mic
    mic_highpass_hz: float
    mic_lowpass_hz: float | None
    rt60_s: float  # reverberation seen by the far mic


# Per-clip random ranges (SNR, distant machine speed) are narrow on purpose: with only 10 target training
# clips, every random parameter of the target domain widens the gap between domains far more than real
# recordings do (measured with bench/synth_difficulty.py).
ENVIRONMENTS: dict[str, Environment] = {
    "source": Environment(
        noise_exponent=1.0, hum_hz=50.0, distant_hz=(99.8, 100.2), distant_level=0.35,
        impact_rate_hz=0.1, vent_hz=250.0, snr_db=(2.75, 3.25), mic_highpass_hz=30.0,
        mic_lowpass_hz=None, rt60_s=0.35,
    ),
    "target": Environment(
        noise_exponent=1.6, hum_hz=60.0, distant_hz=(299.4, 300.6), distant_level=0.5,
        impact_rate_hz=0.2, vent_hz=600.0, snr_db=(0.75, 1.25), mic_highpass_hz=120.0,
        mic_lowpass_hz=6500.0, rt60_s=0.6,
    ),
}

OUTPUT_GAIN = 0.05  # near-mic machine RMS in full scale (about -26 dBFS), leaves headroom for impacts
FAR_ATTENUATION = 0.3  # far mic hears the machine about 10 dB quieter


@lru_cache(maxsize=8)
def _background_powers(env: Environment, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-RMS power profiles of the noise floor and the ventilation band (cached: fixed per domain)."""
    spec = Spectrum(n, sr)
    floor = spec.unit_power(power_law(spec.f, env.noise_exponent))
    return floor, spec.unit_power(resonance(spec.f, env.vent_hz, 2.0))


def render_background(rng: np.random.Generator, env: Environment, n: int, sr: int) -> np.ndarray:
    """Unit-RMS factory background: coloured noise, mains hum, distant machine, ventilation, impacts."""
    spec = Spectrum(n, sr)
    floor_power, vent_power = _background_powers(env, n, sr)
    spec.add_power(floor_power, 1.0)
    spec.add_power(vent_power, 0.4 * rng.uniform(0.95, 1.05))
    hum_h = np.arange(1, 6)
    spec.tones(env.hum_hz * hum_h, 0.12 * rng.uniform(0.95, 1.05) / hum_h, rng.uniform(0, 2 * np.pi, 5))
    f0 = rng.uniform(*env.distant_hz)
    dist_h = np.arange(1, 9)
    dist_rms = env.distant_level * 0.6 / dist_h**0.7
    # mostly stable lines: narrow random peaks alone would make the level of each harmonic erratic
    spec.tones(f0 * dist_h, dist_rms * np.sqrt(2 * 0.8), rng.uniform(0, 2 * np.pi, dist_h.size))
    spec.peaks(f0 * dist_h, dist_rms * np.sqrt(0.2), 1.0 + 0.005 * f0 * dist_h)
    x = spec.render(rng)
    # the whole hall breathes slowly (ventilation, distant machine duty cycle); a slow sine keeps that
    # from making some clips much more variable than others
    x *= 1.0 + np.float32(0.1) * slow_sine(n, sr, rng.uniform(0.2, 0.4), rng.uniform())
    times = poisson_times(rng, env.impact_rate_hz, n / sr)
    if times.size:
        modes = rng.uniform(300, 3000, 3)
        kern = burst_kernels(rng, times.size, sr, modes, rng.uniform(0.01, 0.05, 3), length_s=0.12)
        add_events(x, times, rng.uniform(0.3, 1.5, times.size), kern, sr)
    return x / np.sqrt(np.mean(np.square(x), dtype=np.float64) + 1e-12)


@lru_cache(maxsize=8)
def _mic_sos(domain: str, sr: int) -> np.ndarray:
    env = ENVIRONMENTS[domain]
    parts = [butter_sos("highpass", env.mic_highpass_hz, 2, sr)]
    if env.mic_lowpass_hz is not None and env.mic_lowpass_hz < sr / 2:
        parts.append(butter_sos("lowpass", env.mic_lowpass_hz, 2, sr))
    return np.vstack(parts)


def microphone(x: np.ndarray, domain: str, sr: int) -> np.ndarray:
    """Apply the domain's microphone frequency response."""
    return scipy.signal.sosfilt(_mic_sos(domain, sr), x).astype(np.float32, copy=False)


def room_ir(rng: np.random.Generator, rt60_s: float, sr: int) -> np.ndarray:
    """Direct path plus an exponentially decaying diffuse tail (direct-to-reverberant ratio ~ 0 dB)."""
    length = int(rt60_s * sr)
    t = time_axis(length, sr)
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60_s)
    tail[: int(0.005 * sr)] = 0.0  # first reflections arrive a few ms after the direct sound
    tail /= np.sqrt(np.sum(np.square(tail)) + 1e-12)
    ir = tail
    ir[0] += 1.0
    return ir.astype(np.float32)


def render_scene(
    machine: np.ndarray,
    domain: str,
    sr: int,
    rng_bg: np.random.Generator,
    rng_far: np.random.Generator | None,
) -> np.ndarray:
    """Mix machine (unit RMS design level) with the domain background as heard by the near mic.

    With ``rng_far`` given, returns (n, 2): left = near mic (identical to the mono result), right = far
    mic (machine attenuated, reverberant and air-damped; background as loud as at the near mic, hence
    relatively louder, and partly decorrelated from the left channel).
    """
    env = ENVIRONMENTS[domain]
    n = machine.size
    bg = render_background(rng_bg, env, n, sr)
    snr_db = rng_bg.uniform(*env.snr_db)
    bg_gain = 10.0 ** (-snr_db / 20.0)
    near = microphone(OUTPUT_GAIN * (machine + bg_gain * bg), domain, sr)
    if rng_far is None:
        return near
    far_machine = fft_convolve(machine, room_ir(rng_far, env.rt60_s, sr))
    far_machine = scipy.signal.sosfilt(butter_sos("lowpass", 4000.0, 1, sr), far_machine)
    # a lag of >= 1 s decorrelates the broadband background while hum and distant machine stay coherent
    lag = int(rng_far.integers(sr, max(sr + 1, n - sr)))
    far_bg = bg + np.roll(bg, lag)
    # the diffuse background is as loud at both mics (bg has unit RMS)
    far_bg *= np.float32(1.0 / np.sqrt(np.mean(np.square(far_bg), dtype=np.float64) + 1e-12))
    far = FAR_ATTENUATION * far_machine + bg_gain * far_bg
    far = microphone(OUTPUT_GAIN * far.astype(np.float32), domain, sr)
    return np.stack([near, far], axis=1)
