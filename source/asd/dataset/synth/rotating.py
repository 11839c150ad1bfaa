"""Rotating machines: a fan and a gearbox.

Both are built from harmonic series (rotation, blade pass, gear mesh) plus broadband noise. Harmonics are
a stable line plus a narrow skirt whose width grows with frequency, which is how a small speed wander
looks in a spectrum.
"""

from __future__ import annotations

import numpy as np

from .machine_base import ClipContext, MachineType, grid
from .signals import (
    Spectrum,
    add_events,
    band_power,
    burst_kernels,
    highpass,
    lowpass,
    periodic_times,
    resonance,
    slow_sine,
)


def add_harmonics(
    spec: Spectrum,
    rng: np.random.Generator,
    freqs: np.ndarray,
    rms: np.ndarray,
    rel_width: float,
    line_frac: float = 0.85,
) -> None:
    """Harmonics as a deterministic line (``line_frac`` of the power) plus a narrowband skirt."""
    freqs = np.asarray(freqs, float)
    rms = np.asarray(rms, float)
    spec.tones(freqs, rms * np.sqrt(2.0 * line_frac), rng.uniform(0, 2 * np.pi, freqs.shape))
    # skirts at least a few Hz wide: narrower ones fluctuate so slowly that clip levels become erratic
    spec.peaks(freqs, rms * np.sqrt(1.0 - line_frac), rel_width * freqs + 2.0)


def _jitter(rng: np.random.Generator, size: int, spread: float) -> np.ndarray:
    """Per-clip random gains around 1 (log-normal), so normal clips vary naturally."""
    return np.exp(spread * rng.standard_normal(size))


# ---- fan ----------------------------------------------------------------------------------------


def render_fan(ctx: ClipContext) -> np.ndarray:
    """Axial fan: blade-pass harmonics, weak rotation harmonics, flow noise, motor slot whine.

    Anomalies: ``imbalance`` (strong 1x rotation line, amplitude modulation at the rotation rate),
    ``bearing`` (periodic resonant impacts at the outer-race fault rate), ``clogging`` (flow noise
    darker and louder, a stall whistle, stronger blade pass).
    """
    rng, arng = ctx.rng, ctx.anomaly_rng
    rpm = float(ctx.attr("spd"))
    blades = int(ctx.attr("bld"))
    speed = rpm / 1500.0
    fr = rpm / 60.0 * (1.0 + 0.005 * rng.standard_normal())
    s_imb, s_brg, s_clog = ctx.s("imbalance"), ctx.s("bearing"), ctx.s("clogging")

    spec = Spectrum(ctx.n, ctx.sr)
    f = spec.f
    loud = speed**1.5 * float(_jitter(rng, 1, 0.05)[0])
    clog_shift = 1.0 - 0.2 * np.tanh(s_clog)
    fc = 900.0 * speed * clog_shift * rng.uniform(0.97, 1.03)
    flow_shape = resonance(f, fc, 0.6) * lowpass(f, 5000.0) * highpass(f, 40.0)
    spec.noise(flow_shape, 0.7 * loud * (1.0 + 0.25 * s_clog))

    k = np.arange(1, 11)
    bp_rms = 0.5 * loud * k**-1.0 * _jitter(rng, k.size, 0.07)
    bp_rms[0] *= 1.0 + 0.3 * s_clog
    add_harmonics(spec, rng, blades * fr * k, bp_rms, 0.002)

    h = np.arange(1, 5)
    rot_rms = 0.06 * loud * h**-1.0 * _jitter(rng, h.size, 0.15)
    rot_rms[0] += 0.5 * loud * s_imb
    add_harmonics(spec, rng, fr * h, rot_rms, 0.002)

    slot = 36.0 * fr  # motor slot harmonic, model dependent amplitude
    add_harmonics(spec, rng, np.array([slot, 2 * slot]), 0.1 * loud * np.array([1.0, 0.4]), 0.001)
    if s_clog > 0:
        # rotating stall: a whistle below the flow hump
        spec.peaks(np.array([0.55 * fc * arng.uniform(0.9, 1.1)]), np.array([0.15 * loud * s_clog]), 3.0)

    x = spec.render(rng)
    depth = rng.uniform(0.01, 0.05) + min(0.3 * s_imb, 0.9)
    x *= 1.0 + np.float32(depth) * slow_sine(ctx.n, ctx.sr, fr, rng.uniform())

    if s_brg > 0:
        times = periodic_times(arng, 3.07 * fr, ctx.duration, 0.02)
        modes = arng.uniform(2500, 5000, 2)
        kern = burst_kernels(arng, times.size, ctx.sr, modes, 0.0015, length_s=0.01)
        zone = 1.0 + 0.6 * np.sin(2 * np.pi * fr * times)  # impacts are stronger in the load zone
        add_events(x, times, 2.0 * loud * s_brg * zone * arng.uniform(0.6, 1.0, times.size), kern, ctx.sr)
    return x


FAN = MachineType(
    name="fan",
    source_attributes=grid(spd=("1200", "1500", "1800"), bld=("5", "7")),
    target_attributes=grid(spd=("2100",), bld=("7",)),
    anomalies=("imbalance", "bearing", "clogging"),
    base_strength=1.8,
    renderer=render_fan,
)


# ---- gearbox ------------------------------------------------------------------------------------


def render_gearbox(ctx: ClipContext) -> np.ndarray:
    """Two-stage gearbox driven by a DC motor: mesh harmonics with rotation sidebands, load noise.

    Attributes: ``spd`` motor voltage (sets shaft speed), ``load`` (mesh amplitude, broadband level,
    slight slow-down). Anomalies: ``broken_tooth`` (once-per-revolution impact, stronger sidebands),
    ``wear`` (raised and smeared sidebands, more broadband noise, stronger second mesh harmonic).
    """
    rng, arng = ctx.rng, ctx.anomaly_rng
    volts = float(ctx.attr("spd").rstrip("V"))
    load = float(ctx.attr("load"))
    fr = volts * 0.75 * (1.0 - 0.012 * load) * (1.0 + 0.004 * rng.standard_normal())
    s_tooth, s_wear = ctx.s("broken_tooth"), ctx.s("wear")

    spec = Spectrum(ctx.n, ctx.sr)
    loud = (volts / 31.0) ** 1.2 * float(_jitter(rng, 1, 0.05)[0])
    mesh = 27.0 * fr
    k = np.arange(1, 6)
    mesh_rms = (0.35 + 0.1 * load) * loud * k**-1.2 * _jitter(rng, k.size, 0.07)
    mesh_rms[1] *= 1.0 + 0.4 * s_wear
    width = 0.001 * (1.0 + 1.5 * np.tanh(s_wear))
    add_harmonics(spec, rng, mesh * k, mesh_rms, width)

    # sidebands at mesh harmonic +- j * shaft rate (natural eccentricity, raised by damage)
    j = np.array([-2, -1, 1, 2])
    ecc = 0.1 * rng.uniform(0.85, 1.15) * (1.0 + 1.0 * s_wear + 1.5 * s_tooth)
    sb_f = (mesh * k[:3, None] + j[None, :] * fr).ravel()
    sb_rms = (mesh_rms[:3, None] * ecc / np.abs(j)[None, :]).ravel()
    add_harmonics(spec, rng, sb_f, sb_rms, width)

    mesh2 = fr * 27.0 / 64.0 * 21.0  # second stage
    add_harmonics(spec, rng, mesh2 * k[:3], 0.2 * loud * k[:3] ** -1.0, 0.001)
    add_harmonics(spec, rng, np.array([fr, 2 * fr]), np.array([0.05, 0.03]) * loud, 0.002)
    add_harmonics(spec, rng, np.array([44.0 * fr]), np.array([0.08 * loud]), 0.001)

    noise_power = band_power(ctx.n, ctx.sr, round(2500.0 * rng.uniform(0.98, 1.02), -1), 1.0, 100.0)
    spec.add_power(noise_power, 0.25 * loud * (1.0 + 0.3 * load) * (1.0 + 0.5 * s_wear))

    x = spec.render(rng)
    if s_tooth > 0:
        times = periodic_times(arng, fr, ctx.duration, 0.005)
        modes = arng.uniform(1200, 2800, 3)
        kern = burst_kernels(arng, times.size, ctx.sr, modes, 0.004, length_s=0.025)
        add_events(x, times, 3.0 * loud * s_tooth * arng.uniform(0.7, 1.0, times.size), kern, ctx.sr)
    return x


GEARBOX = MachineType(
    name="gearbox",
    source_attributes=grid(spd=("28V", "31V", "34V"), load=("0", "1", "2")),
    target_attributes=grid(spd=("40V",), load=("4",)),
    anomalies=("broken_tooth", "wear"),
    base_strength=2.0,
    renderer=render_gearbox,
)
