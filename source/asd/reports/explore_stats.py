"""Streaming statistics of a dataset's clips for the `explore` page.

Everything here is accumulated clip by clip in memory that does not grow with the number of clips: counts
keyed by (machine, section, domain, attributes, split, label) combinations, running moments, fixed-bin
histograms, summed spectra per group and bounded lists of the most extreme clips.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

FULL_SCALE = 32768.0
FLOOR_DB = -120.0
SILENT_DB = -60.0  # a 20 ms frame quieter than this counts as silent
SILENT_FRAME_SECONDS = 0.02
LEVEL_STATS = ("duration_s", "rms_dbfs", "peak_dbfs", "clipped_fraction", "silent_fraction")
RMS_BINS = np.arange(-100.0, 2.0, 2.0)


def _db(value: float) -> float:
    return float(max(FLOOR_DB, 20.0 * np.log10(max(value, 1e-12) / FULL_SCALE)))


def level_stats(samples: np.ndarray, rate: int) -> dict[str, float]:
    """Duration, RMS and peak level (dBFS: 20·log10(x / 32768)), the share of samples at int16 full scale
    (clipped) and the share of 20 ms frames below -60 dBFS (silent)."""
    x = samples.astype(np.float64)
    n = len(x)
    if n == 0:
        return {"duration_s": 0.0, "rms_dbfs": FLOOR_DB, "peak_dbfs": FLOOR_DB, "clipped_fraction": 0.0,
                "silent_fraction": 1.0}
    frame = max(1, int(rate * SILENT_FRAME_SECONDS))
    usable = (n // frame) * frame or n
    frames = x[:usable].reshape(-1, min(frame, usable))
    frame_db = 10.0 * np.log10(np.maximum((frames ** 2).mean(axis=1), 1e-12) / FULL_SCALE ** 2)
    return {
        "duration_s": n / rate,
        "rms_dbfs": _db(float(np.sqrt((x ** 2).mean()))),
        "peak_dbfs": _db(float(np.abs(x).max())),
        "clipped_fraction": float(((samples >= 32767) | (samples <= -32768)).mean()),
        "silent_fraction": float((frame_db < SILENT_DB).mean()),
    }


def attribute_pairs(attributes: str) -> list[tuple[str, str]]:
    """(parameter, value) pairs of a DCASE attribute string (`car_B1_spd_31V` -> car=B1, spd=31V); a string
    that is not name/value pairs is one value of "attributes"; hidden or empty attributes give none."""
    if not attributes or attributes == "noAttribute":
        return []
    tokens = attributes.split("_")
    if len(tokens) % 2 == 0:
        return list(zip(tokens[0::2], tokens[1::2], strict=True))
    return [("attributes", attributes)]


@dataclass
class Running:
    """Count, mean, variance (Welford), min and max of a stream of numbers."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = np.inf
    hi: float = -np.inf

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)
        self.lo, self.hi = min(self.lo, value), max(self.hi, value)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / (self.n - 1))) if self.n > 1 else 0.0


class Extremes:
    """The `k` largest (value, name) pairs seen, in bounded memory."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[float, str]] = []

    def add(self, value: float, name: str) -> None:
        item = (value, name)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def largest(self) -> list[tuple[float, str]]:
        return sorted(self.heap, reverse=True)


@dataclass
class SpectrumSum:
    total: np.ndarray | None = None
    n: int = 0

    def add(self, spectrum: np.ndarray) -> None:
        self.total = spectrum.astype(np.float64) if self.total is None else self.total + spectrum
        self.n += 1

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.n


@dataclass
class DatasetStats:
    """What pass 1 over a dataset's clips collects (see the module docstring)."""

    outliers_k: int = 5
    counts: Counter = field(default_factory=Counter)
    rates: Counter = field(default_factory=Counter)  # (machine, original rate, channels) -> clips
    levels: dict = field(default_factory=dict)  # (machine, domain, stat) -> Running
    high: dict = field(default_factory=dict)  # (machine, domain, stat) -> Extremes of value
    low: dict = field(default_factory=dict)  # (machine, domain, stat) -> Extremes of -value
    rms_hist: dict = field(default_factory=dict)  # (machine, domain) -> counts over RMS_BINS
    spectra: dict = field(default_factory=dict)  # ("group", machine, split, domain, label) / ("attr", ...)
    notes: Counter = field(default_factory=Counter)  # (machine, note) -> clips
    noted: list = field(default_factory=list)  # first clips with notes: (machine, split, file, notes)
    partial: int = 0  # clips with samples missing from the shard (tail=drop)
    n_clips: int = 0

    def add(self, meta: dict, samples: np.ndarray | None, spectrum: np.ndarray, rate: int,
            covered: int) -> None:
        machine, domain, split, label = meta["machine"], meta["domain"], meta["split"], meta["label"]
        self.n_clips += 1
        self.counts[(machine, meta["section"], domain, meta["attributes"], split, label)] += 1
        self.rates[(machine, int(meta["original_sample_rate"]), int(meta["original_channels"]))] += 1
        if samples is not None:
            stats = level_stats(samples, rate)
            stats["duration_s"] = int(meta["n_samples"]) / rate  # the clip's length, whatever is stored
            self.partial += covered < int(meta["n_samples"])
            for stat, value in stats.items():
                key = (machine, domain, stat)
                self.levels.setdefault(key, Running()).add(value)
                self.high.setdefault(key, Extremes(self.outliers_k)).add(value, meta["file_name"])
                self.low.setdefault(key, Extremes(self.outliers_k)).add(-value, meta["file_name"])
            hist = self.rms_hist.setdefault((machine, domain), np.zeros(len(RMS_BINS) - 1, dtype=np.int64))
            hist += np.histogram([np.clip(stats["rms_dbfs"], RMS_BINS[0], RMS_BINS[-1] - 1e-9)], RMS_BINS)[0]
        self.spectra.setdefault(("group", machine, split, domain, label), SpectrumSum()).add(spectrum)
        if label != "anomaly":
            for name, value in attribute_pairs(meta["attributes"]):
                self.spectra.setdefault(("attr", machine, name, value, domain), SpectrumSum()).add(spectrum)
        if split == "train":
            self.spectra.setdefault(("train", machine, meta["section"], domain), SpectrumSum()).add(spectrum)
        if meta["notes"]:
            for note in str(meta["notes"]).split("; "):
                self.notes[(machine, note.split(" ")[0])] += 1
            if len(self.noted) < 50:
                self.noted.append((machine, split, meta["file_name"], meta["notes"]))

    def outliers(self, z_limit: float = 3.0) -> list[dict]:
        """Clips whose level statistic lies more than `z_limit` standard deviations from their machine
        type and domain's mean (RMS, peak, duration), and clips with any clipping or mostly silence."""
        rows = []
        for key, running in sorted(self.levels.items()):
            machine, domain, stat = key
            candidates = [(v, n) for v, n in self.high[key].largest()] + \
                         [(-v, n) for v, n in self.low[key].largest()]
            seen = set()
            for value, name in candidates:
                if name in seen:
                    continue
                seen.add(name)
                z = (value - running.mean) / running.std if running.std > 0 else 0.0
                if stat == "clipped_fraction":
                    keep = value > 0
                elif stat == "silent_fraction":
                    keep = value >= 0.5
                else:
                    keep = abs(z) > z_limit
                if keep:
                    rows.append({"machine": machine, "domain": domain, "statistic": stat, "clip": name,
                                 "value": value, "z": z})
        return rows


@dataclass
class Distances:
    """Pass 2: each training clip's distance to the mean spectrum of its machine x section x domain group."""

    k: int = 5
    running: dict = field(default_factory=dict)  # (machine, section, domain) -> Running
    top: dict = field(default_factory=dict)  # same key -> Extremes of (distance, "unit|key|file")

    def add(self, group: tuple, mean: np.ndarray, spectrum: np.ndarray, ref: str) -> None:
        distance = float(np.sqrt(np.mean((spectrum - mean) ** 2)))
        self.running.setdefault(group, Running()).add(distance)
        self.top.setdefault(group, Extremes(self.k)).add(distance, ref)

    def least_typical(self, machine: str, n: int) -> list[dict]:
        """The `n` training clips of a machine type farthest from their group's mean (by z within group)."""
        rows = []
        for group, extremes in self.top.items():
            if group[0] != machine:
                continue
            running = self.running[group]
            for distance, ref in extremes.largest():
                z = (distance - running.mean) / running.std if running.std > 0 else 0.0
                rows.append({"section": group[1], "domain": group[2], "ref": ref, "distance_db": distance,
                             "z": z, "group_clips": running.n, "group_mean_db": running.mean})
        return sorted(rows, key=lambda r: -r["z"])[:n]
