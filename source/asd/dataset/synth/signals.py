"""Signal building blocks for the synthetic machine sounds.

Everything works on one clip at a time and is vectorised with numpy. Stationary parts (coloured noise,
harmonic lines, narrowband peaks) are summed as a spectrum and turned into audio with a single inverse
FFT, which keeps a 10 s clip down to a few milliseconds of work. Transient parts (impacts, clicks) are
short kernels added in the time domain.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal

FloatArray = np.ndarray


@lru_cache(maxsize=16)
def rfft_freqs(n: int, sr: int) -> FloatArray:
    """Frequencies (Hz) of the rfft bins of an n-sample signal; cached because every clip reuses them."""
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    freqs.setflags(write=False)
    return freqs


@lru_cache(maxsize=16)
def time_axis(n: int, sr: int) -> FloatArray:
    """Sample times in seconds (float64, read-only)."""
    t = np.arange(n, dtype=np.float64) / sr
    t.setflags(write=False)
    return t


@lru_cache(maxsize=16)
def time_axis32(n: int, sr: int) -> FloatArray:
    """float32 sample times: precise enough for the phase of slow modulations (a few Hz * seconds)."""
    t = time_axis(n, sr).astype(np.float32)
    t.setflags(write=False)
    return t


def linear_phase32(n: int, sr: int, freq_hz: float, phase_cycles: float) -> FloatArray:
    """Radians 2 pi (f t + phase) in float32, unwrapped: only for f * duration below ~1e4 cycles."""
    arg = time_axis32(n, sr) * np.float32(2 * np.pi * freq_hz)
    arg += np.float32(2 * np.pi * phase_cycles)
    return arg


def slow_sine(n: int, sr: int, freq_hz: float, phase_cycles: float) -> FloatArray:
    """sin(2 pi (f t + phase)) in float32 (see ``linear_phase32`` for the frequency limit)."""
    arg = linear_phase32(n, sr, freq_hz, phase_cycles)
    return np.sin(arg, out=arg)


class Spectrum:
    """Accumulates the stationary part of a signal in the frequency domain.

    Noise components add *power* (their sum is again Gaussian, so one random draw serves them all);
    deterministic sinusoids add complex *lines*. ``render`` performs the one inverse FFT.
    """

    def __init__(self, n: int, sr: int) -> None:
        self.n = n
        self.sr = sr
        self.f = rfft_freqs(n, sr)
        self.df = sr / n
        self.power = np.zeros(self.f.shape, dtype=np.float64)
        self.lines = np.zeros(self.f.shape, dtype=np.complex64)

    def noise(self, shape: FloatArray, rms: float) -> None:
        """Add Gaussian noise with magnitude response ``shape`` (over ``self.f``) and the given RMS."""
        p = np.square(shape, dtype=np.float64)
        total = p.sum()
        if total > 0 and rms > 0:
            # irfft (backward norm): time variance = 2 * sum(E|X|^2) / n^2
            self.power += p * (rms * rms * self.n * self.n / (2.0 * total))

    def add_power(self, power: FloatArray, rms: float) -> None:
        """Add a precomputed power profile already normalised by ``unit_power`` (cheap for cached shapes)."""
        self.power += power * (rms * rms)

    def unit_power(self, shape: FloatArray) -> FloatArray:
        """Power profile of ``shape`` scaled so that ``add_power(p, rms)`` yields that RMS."""
        p = np.square(shape, dtype=np.float64)
        return p * (self.n * self.n / (2.0 * max(p.sum(), 1e-300)))

    def tones(self, freqs: FloatArray, amps: FloatArray, phases: FloatArray) -> None:
        """Add exactly periodic sinusoids (peak amplitude ``amps``), quantised to the bin grid."""
        freqs, amps, phases = np.broadcast_arrays(
            np.asarray(freqs, float), np.asarray(amps, float), np.asarray(phases, float)
        )
        bins = np.rint(freqs / self.df).astype(np.int64)
        ok = (bins > 0) & (bins < self.f.size - 1) & (amps != 0)
        np.add.at(self.lines, bins[ok], amps[ok] * (self.n / 2.0) * np.exp(1j * phases[ok]))

    def peaks(self, freqs: FloatArray, rms: FloatArray, widths: FloatArray) -> None:
        """Add narrowband noise peaks (Gaussian power profile, std ``widths`` Hz), each with its own RMS.

        Physically: a harmonic whose frequency wanders slightly (speed fluctuation) smears into a peak
        whose width grows with the harmonic order.
        """
        freqs, rms, widths = np.broadcast_arrays(
            np.asarray(freqs, float), np.asarray(rms, float), np.asarray(widths, float)
        )
        keep = (rms > 0) & (freqs > 0) & (freqs < self.sr / 2)
        if not keep.any():
            return
        freqs, rms, widths = freqs[keep], rms[keep], np.maximum(widths[keep], self.df)
        half = int(np.ceil(4.0 * widths.max() / self.df)) + 1
        centre = np.rint(freqs / self.df).astype(np.int64)
        idx = centre[:, None] + np.arange(-half, half + 1)[None, :]
        g = np.exp(-0.5 * np.square((idx * self.df - freqs[:, None]) / widths[:, None]))
        valid = (idx > 0) & (idx < self.f.size - 1)
        g = np.where(valid, g, 0.0)
        g /= np.maximum(g.sum(axis=1, keepdims=True), 1e-30)
        g *= (np.square(rms) * self.n * self.n / 2.0)[:, None]
        np.add.at(self.power, np.clip(idx, 0, self.f.size - 1).ravel(), g.ravel())

    def render(self, rng: np.random.Generator) -> FloatArray:
        """Draw one realisation and return it as float32 audio of length ``n``.

        Noise bins get the expected magnitude and a uniformly random phase: the time signal is still
        Gaussian-like (many bins add up), costs a fraction of drawing complex normals, and its
        spectrum is less erratic from clip to clip than a periodogram of white noise.
        """
        phase = rng.random(self.f.size, dtype=np.float32) * np.float32(2 * np.pi)
        amp = np.sqrt(self.power).astype(np.float32)
        spec = np.empty(self.f.size, np.complex64)
        spec.real = amp * np.cos(phase)
        spec.imag = amp * np.sin(phase)
        spec += self.lines
        return scipy.fft.irfft(spec, self.n)


# ---- spectral shapes (magnitude responses evaluated on a frequency axis) -------------------------


def power_law(f: FloatArray, exponent: float, f_low: float = 20.0) -> FloatArray:
    """Magnitude ~ f^(-exponent/2), i.e. power ~ 1/f^exponent (1 = pink, 2 = brown); flat below f_low."""
    return np.power(np.maximum(f, f_low), -exponent / 2.0)


def resonance(f: FloatArray, fc: float, q: float) -> FloatArray:
    """Magnitude of a second-order band-pass resonance at ``fc`` with quality ``q`` (peak 1)."""
    ratio = np.maximum(f, 1e-3) / fc
    d = ratio - 1.0 / ratio
    return 1.0 / np.sqrt(1.0 + (q * q) * (d * d))


def lowpass(f: FloatArray, fc: float, order: int = 1) -> FloatArray:
    """Butterworth-like low-pass magnitude."""
    return 1.0 / np.sqrt(1.0 + np.power(f / fc, 2 * order))


def highpass(f: FloatArray, fc: float, order: int = 1) -> FloatArray:
    """Butterworth-like high-pass magnitude."""
    return 1.0 / np.sqrt(1.0 + np.power(fc / np.maximum(f, 1e-3), 2 * order))


# ---- transients ---------------------------------------------------------------------------------


def burst_kernels(
    rng: np.random.Generator,
    count: int,
    sr: int,
    modes_hz: FloatArray,
    decays_s: FloatArray,
    mode_jitter: float = 0.03,
    length_s: float = 0.04,
    noise_mix: float = 0.3,
) -> FloatArray:
    """``count`` resonant impact kernels, shape (count, L): damped sinusoids plus a short noise attack.

    Each kernel gets slightly jittered mode frequencies so repeated impacts are not identical. Peak
    amplitude is about 1.
    """
    modes = np.asarray(modes_hz, float)
    decays = np.broadcast_to(np.asarray(decays_s, float), modes.shape)
    length = max(8, int(length_s * sr))
    t = np.arange(length) / sr
    f = modes[None, :] * (1.0 + mode_jitter * rng.standard_normal((count, modes.size)))
    ph = rng.uniform(0, 2 * np.pi, (count, modes.size))
    w = rng.uniform(0.5, 1.0, (count, modes.size))
    env = np.exp(-t[None, None, :] / decays[None, :, None])
    k = (w[..., None] * env * np.sin(2 * np.pi * f[..., None] * t[None, None, :] + ph[..., None])).sum(1)
    attack = np.exp(-t / 0.0015)[None, :] * rng.standard_normal((count, length))
    k = k + noise_mix * modes.size * attack
    k /= np.maximum(np.abs(k).max(axis=1, keepdims=True), 1e-9)
    return k.astype(np.float32)


def add_events(x: FloatArray, times_s: FloatArray, amps: FloatArray, kernels: FloatArray, sr: int) -> None:
    """Add kernels (one per event, or one shared 1-D kernel) at the given times, in place."""
    times_s = np.asarray(times_s, float)
    if times_s.size == 0:
        return
    kernels = np.atleast_2d(kernels)
    if kernels.shape[0] == 1:
        kernels = np.broadcast_to(kernels, (times_s.size, kernels.shape[1]))
    start = np.rint(times_s * sr).astype(np.int64)
    idx = start[:, None] + np.arange(kernels.shape[1])[None, :]
    vals = np.asarray(amps, np.float32)[:, None] * kernels
    ok = (idx >= 0) & (idx < x.size)
    np.add.at(x, idx[ok], vals[ok])


def periodic_times(rng: np.random.Generator, rate_hz: float, duration_s: float, jitter: float) -> FloatArray:
    """Event times at ``rate_hz`` with random start phase and relative timing jitter."""
    if rate_hz <= 0:
        return np.zeros(0)
    period = 1.0 / rate_hz
    n_ev = int(duration_s * rate_hz) + 2
    t = (np.arange(n_ev) + rng.uniform()) * period
    t = t + jitter * period * rng.standard_normal(n_ev)
    return t[(t >= 0) & (t < duration_s)]


def poisson_times(rng: np.random.Generator, rate_hz: float, duration_s: float) -> FloatArray:
    """Poisson event times (sorted)."""
    count = rng.poisson(rate_hz * duration_s)
    return np.sort(rng.uniform(0, duration_s, count))


def smooth_noise(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float) -> FloatArray:
    """Unit-variance slowly varying random signal (band-limited to ``cutoff_hz``), for wobble/fluctuation."""
    m = max(4, int(np.ceil(n / sr * cutoff_hz * 4)) + 2)
    knots = rng.standard_normal(m)
    return np.interp(np.linspace(0, m - 1, n), np.arange(m), knots).astype(np.float32)


# ---- filters ------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def butter_sos(kind: str, cutoff_hz: float, order: int, sr: int) -> np.ndarray:
    """Cached Butterworth second-order sections."""
    return scipy.signal.butter(order, cutoff_hz, btype=kind, fs=sr, output="sos")


def fft_convolve(x: FloatArray, ir: FloatArray) -> FloatArray:
    """Linear convolution truncated to len(x) (zero padded, so no wrap-around)."""
    size = scipy.fft.next_fast_len(x.size + ir.size - 1, real=True)
    spec = scipy.fft.rfft(x, size) * scipy.fft.rfft(ir, size)
    return scipy.fft.irfft(spec, size)[: x.size].astype(np.float32, copy=False)


def wrap_cycles(cycles: FloatArray) -> FloatArray:
    """Running phase in cycles to wrapped radians (float32); floor is much cheaper than np.mod."""
    frac = (cycles - np.floor(cycles)).astype(np.float32, copy=False)
    frac *= np.float32(2 * np.pi)
    return frac


def steady_tone(n: int, sr: int, freq_hz: float, phase_cycles: float) -> FloatArray:
    """Constant-frequency sine computed in float32 (phase error below 0.02 rad for 10 s at 8 kHz)."""
    cycles = time_axis32(n, sr) * np.float32(freq_hz)
    cycles += np.float32(phase_cycles)
    return np.sin(wrap_cycles(cycles))


@lru_cache(maxsize=48)
def band_power(n: int, sr: int, fc_hz: float, q: float, highpass_hz: float) -> FloatArray:
    """Cached unit power profile of a resonance times a high-pass (see ``Spectrum.add_power``).

    Callers round ``fc_hz`` so that random per-clip centre frequencies hit the cache.
    """
    spec = Spectrum(n, sr)
    p = spec.unit_power(resonance(spec.f, fc_hz, q) * highpass(spec.f, highpass_hz)).astype(np.float32)
    p.setflags(write=False)
    return p


def to_pcm16(x: FloatArray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 with rounding and hard clipping (deterministic conversion)."""
    return np.clip(np.rint(np.asarray(x, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
