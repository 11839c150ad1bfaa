"""Intermittent machines: a linear slide rail and a solenoid valve.

Their sound is organised in time (strokes, open/close cycles), so they are built from time envelopes,
frequency-modulated tones and transient clicks on top of gated noise.
"""

from __future__ import annotations

import numpy as np

from .machine_base import ClipContext, MachineType, grid
from .signals import (
    Spectrum,
    add_events,
    band_power,
    burst_kernels,
    linear_phase32,
    resonance,
    smooth_noise,
    steady_tone,
    time_axis,
    time_axis32,
    wrap_cycles,
)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred box smoothing in O(n) (used to soften gate edges)."""
    if width <= 1:
        return x
    c = np.cumsum(np.concatenate([np.zeros(width), x, np.full(width, x[-1])]), dtype=np.float64)
    half = width // 2
    out = (c[width + half : width + half + x.size] - c[half : half + x.size]) / width
    return out.astype(np.float32)


def _tone(wrapped: np.ndarray, harmonics: int, amps: np.ndarray) -> np.ndarray:
    """Sum of harmonics 1..``harmonics`` of a running phase (float32 radians, kept small).

    Higher harmonics come from the angle-addition recurrence, which avoids one transcendental call per
    harmonic.
    """
    s1, c1 = np.sin(wrapped), np.cos(wrapped)
    sh, ch = s1, c1
    out = np.float32(amps[0]) * s1
    for h in range(1, harmonics):
        sh, ch = sh * c1 + ch * s1, ch * c1 - sh * s1
        out += np.float32(amps[h]) * sh
    return out


# ---- slide rail ---------------------------------------------------------------------------------

STROKE_M = 0.4


def render_slider(ctx: ClipContext) -> np.ndarray:
    """Servo-driven linear slide: back-and-forth strokes with a trapezoidal velocity profile.

    Sound: servo whine whose pitch follows the speed, rolling/friction noise while moving, stop clicks
    whose strength grows with acceleration, a constant amplifier tone. Anomalies: ``rail_damage``
    (impacts every time the carriage passes a damaged spot), ``no_lube`` (more friction noise and an
    intermittent squeal while moving).
    """
    rng, arng = ctx.rng, ctx.anomaly_rng
    vel = float(ctx.attr("vel")) / 1000.0 * (1.0 + 0.002 * rng.standard_normal())  # m/s, servo-controlled
    acc = float(ctx.attr("ac")) * 9.81 * (1.0 + 0.005 * rng.standard_normal())  # m/s^2
    s_rail, s_lube = ctx.s("rail_damage"), ctx.s("no_lube")

    vp = min(vel, np.sqrt(acc * STROKE_M))  # short strokes never reach full speed
    t_move = STROKE_M / vp + vp / acc
    dwell = 0.3 * rng.uniform(0.97, 1.03)
    cycle = 2 * (t_move + dwell)
    # motion profile in float32 (sub-microsecond accuracy is irrelevant for envelopes)
    f32 = np.float32
    t32 = time_axis32(ctx.n, ctx.sr)
    tau = t32 + f32(rng.uniform(0, cycle))
    tau -= f32(cycle) * np.floor(tau / f32(cycle))
    second = tau >= f32(t_move + dwell)
    tm = np.where(second, tau - f32(t_move + dwell), tau)
    speed = np.minimum(f32(acc) * tm, f32(acc) * (f32(t_move) - tm))
    np.clip(speed, f32(0.0), f32(vp), out=speed)
    speed *= tm < f32(t_move)
    velocity = np.where(second, -speed, speed)
    position = np.cumsum(velocity, dtype=np.float64) / ctx.sr
    moving = speed * f32(1.0 / vp)
    ramp = f32(vp / acc)
    accel_phase = ((tm < ramp) | ((f32(t_move) - tm) < ramp)) & (tm < f32(t_move))

    # servo whine: pitch follows speed, louder while accelerating (torque)
    # float32 running phase: rounding makes a negligible phase wander, far below the speed jitter
    phase = np.cumsum(speed * f32(1000.0 / ctx.sr))
    whine_env = np.sqrt(moving) * (1.0 + 0.5 * accel_phase)
    whine = _tone(wrap_cycles(phase), 3, 0.5 * np.array([1.0, 0.5, 0.25]) * rng.uniform(0.9, 1.1, 3))
    x = (whine * whine_env).astype(np.float32)

    spec = Spectrum(ctx.n, ctx.sr)
    spec.add_power(band_power(ctx.n, ctx.sr, round(3000.0 * rng.uniform(0.97, 1.03), -1), 0.8, 200.0), 1.0)
    friction = spec.render(rng) * moving
    x += (0.5 * np.exp(0.1 * rng.standard_normal()) * (1.0 + 0.3 * s_lube)) * friction

    x += f32(0.08) * steady_tone(ctx.n, ctx.sr, 2400.0, rng.uniform())

    # stop clicks at the end of every movement, smaller start clicks
    starts = np.flatnonzero(np.diff((speed > 0).astype(np.int8)) == 1) / ctx.sr
    stops = np.flatnonzero(np.diff((speed > 0).astype(np.int8)) == -1) / ctx.sr
    click_amp = 1.5 * (acc / (0.3 * 9.81)) ** 0.7
    modes = np.array([900.0, 2100.0, 3700.0]) * rng.uniform(0.98, 1.02)
    for times, gain in ((stops, 1.0), (starts, 0.4)):
        if times.size:
            kern = burst_kernels(rng, times.size, ctx.sr, modes, np.array([0.02, 0.01, 0.006]), length_s=0.08)
            add_events(x, times, click_amp * gain * rng.uniform(0.8, 1.2, times.size), kern, ctx.sr)

    if s_rail > 0:
        spot = arng.uniform(0.2, 0.8) * STROKE_M
        crossings = np.flatnonzero(np.diff(np.sign(position - spot)) != 0) / ctx.sr
        kern = burst_kernels(arng, crossings.size, ctx.sr, arng.uniform(1500, 4000, 2), 0.004, length_s=0.03)
        add_events(x, crossings, 9.0 * s_rail * arng.uniform(0.7, 1.0, crossings.size), kern, ctx.sr)
    if s_lube > 0:
        sq_f = arng.uniform(2000, 3500) * (1.0 + 0.01 * smooth_noise(arng, ctx.n, ctx.sr, 2.0))
        sq_phase = wrap_cycles(np.cumsum(sq_f / ctx.sr, dtype=np.float64))
        on = np.clip(smooth_noise(arng, ctx.n, ctx.sr, 1.0) + 0.3, 0.0, 1.0) * moving
        x += (0.06 * s_lube) * on * np.sin(sq_phase)
    return x


SLIDER = MachineType(
    name="slider",
    source_attributes=grid(vel=("300", "500", "700"), ac=("0.10", "0.30")),
    target_attributes=grid(vel=("900",), ac=("0.50",)),
    anomalies=("rail_damage", "no_lube"),
    base_strength=3.2,
    renderer=render_slider,
)


# ---- solenoid valve -----------------------------------------------------------------------------

# pattern id -> (cycle length s, ((open time s, open duration s), ...))
VALVE_PATTERNS: dict[str, tuple[float, tuple[tuple[float, float], ...]]] = {
    "00": (2.0, ((0.0, 0.5),)),
    "01": (2.0, ((0.0, 0.2), (0.6, 0.2))),
    "02": (2.5, ((0.0, 1.0), (1.4, 0.3))),
    "03": (1.8, ((0.0, 0.25), (0.45, 0.25), (0.9, 0.25))),
}


def render_valve(ctx: ClipContext) -> np.ndarray:
    """Solenoid valve switching compressed air in a repeating pattern.

    Sound: metallic click on opening and (louder) on closing, air-flow hiss while open (level and
    colour set by ``flow``), a constant compressor hum. Anomalies: ``leak`` (hiss also while closed),
    ``sticking`` (late, missing and bouncing openings), ``contamination`` (duller, shorter clicks and a
    whistle in the flow).
    """
    rng, arng = ctx.rng, ctx.anomaly_rng
    cycle, openings = VALVE_PATTERNS[ctx.attr("pat")]
    flow = float(ctx.attr("flow"))
    s_leak, s_stick, s_cont = ctx.s("leak"), ctx.s("sticking"), ctx.s("contamination")

    cycle *= 1.0 + 0.02 * rng.standard_normal()
    offset = rng.uniform(0, cycle)
    n_cycles = int(ctx.duration / cycle) + 2
    base = (np.arange(n_cycles)[:, None] * cycle - offset + np.array([o for o, _ in openings])[None, :])
    dur = np.broadcast_to(np.array([d for _, d in openings])[None, :], base.shape).ravel()
    t_open = base.ravel() + 0.005 * rng.standard_normal(base.size)
    t_close = t_open + dur * (1.0 + 0.03 * rng.standard_normal(base.size))

    if s_stick > 0:
        p = np.tanh(s_stick)
        late = arng.uniform(size=t_open.size) < 0.6 * p
        t_open = t_open + late * arng.uniform(0.02, 0.15, t_open.size) * p
        keep = arng.uniform(size=t_open.size) >= 0.5 * p  # the valve sometimes does not open at all
        t_open, t_close = t_open[keep], t_close[keep]
        t_close = np.maximum(t_close, t_open + 0.01)

    gate = np.zeros(ctx.n, np.float32)
    for a, b in zip(np.rint(t_open * ctx.sr).astype(int), np.rint(t_close * ctx.sr).astype(int), strict=True):
        gate[max(a, 0) : max(min(b, ctx.n), 0)] = 1.0
    gate = _moving_average(gate, int(0.01 * ctx.sr))

    spec = Spectrum(ctx.n, ctx.sr)
    fc = round((1200.0 + 400.0 * flow) * rng.uniform(0.99, 1.01), -1)
    spec.add_power(band_power(ctx.n, ctx.sr, fc, 1.2, 300.0), 1.0)
    x = (0.35 * flow / 4.0) * spec.render(rng) * gate

    t = time_axis(ctx.n, ctx.sr)
    hum_f = 120.0 * rng.uniform(0.995, 1.005)
    hum_phase = linear_phase32(ctx.n, ctx.sr, hum_f, rng.uniform())
    x += _tone(hum_phase, 3, 0.12 * np.array([1.0, 0.5, 0.3]))

    shift = 1.0 - 0.2 * np.tanh(s_cont)
    damp = 1.0 - 0.5 * np.tanh(s_cont)
    open_modes = np.array([2300.0, 4100.0, 6000.0, 180.0]) * shift
    close_modes = np.array([1800.0, 3500.0, 5200.0, 150.0]) * shift
    open_dec = np.array([0.008, 0.005, 0.003, 0.015]) * damp
    close_dec = np.array([0.010, 0.006, 0.004, 0.015]) * damp
    k_open = burst_kernels(rng, t_open.size, ctx.sr, open_modes, open_dec, length_s=0.06)
    k_close = burst_kernels(rng, t_close.size, ctx.sr, close_modes, close_dec, length_s=0.06)
    add_events(x, t_open, 1.2 * rng.uniform(0.85, 1.15, t_open.size), k_open, ctx.sr)
    add_events(x, t_close, 1.8 * rng.uniform(0.85, 1.15, t_close.size), k_close, ctx.sr)

    if s_stick > 0:
        bounce = arng.uniform(size=t_open.size) < 0.4 * np.tanh(s_stick)
        tb = t_open[bounce] + arng.uniform(0.015, 0.04, bounce.sum())
        kb = burst_kernels(arng, tb.size, ctx.sr, open_modes, open_dec, length_s=0.06)
        add_events(x, tb, 1.5 * arng.uniform(0.5, 1.0, tb.size), kb, ctx.sr)
    if s_leak > 0:
        leak = Spectrum(ctx.n, ctx.sr)
        leak.noise(resonance(leak.f, arng.uniform(4000, 6000), 1.5), 1.0)
        x += (0.08 * s_leak) * leak.render(arng)
    if s_cont > 0:
        wf = arng.uniform(3000, 4500)
        whistle = np.sin(wrap_cycles(wf * t + arng.uniform()))
        x += (0.1 * s_cont) * whistle * gate
    return x


VALVE = MachineType(
    name="valve",
    source_attributes=grid(pat=("00", "01", "02"), flow=("2", "4")),
    target_attributes=grid(pat=("03",), flow=("6",)),
    anomalies=("leak", "sticking", "contamination"),
    base_strength=5.0,
    renderer=render_valve,
)
