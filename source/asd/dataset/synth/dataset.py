"""Dataset layout, file naming, per-clip seeding and parallel writing."""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from joblib import Parallel, delayed

from .config import IDS_2020, SynthConfig, make_config
from .environment import render_scene
from .machine_base import Attributes, ClipContext, attribute_string
from .machines import get_machine
from .signals import to_pcm16

HIDDEN = "noAttribute"
_SPLIT = {"train": 0, "test": 1}
_DOMAIN = {"source": 0, "target": 1}
_LABEL = {"normal": 0, "anomaly": 1}
SEVERITY_RANGE = (0.1, 1.0)  # per-clip anomaly severity, relative to the machine's base strength
_CHUNK = 48  # clips per parallel task: amortises task overhead, still balances two workers


@dataclass(frozen=True)
class ClipSpec:
    """One clip to write: where it goes and what it contains."""

    machine: str
    split: str
    domain: str
    label: str
    section: str  # section ("00") for 2024 naming, machine ID ("00", "02") for 2020 naming
    index: int  # the number in the file name
    attributes: Attributes
    name_tail: str  # attribute string as written in the name ("noAttribute" when hidden, "" for 2020)
    path: str  # relative to the dataset root, POSIX separators

    def seed_key(self) -> tuple[int, ...]:
        """Stable integers identifying the clip (Python's hash() is salted per process, crc32 is not)."""
        return (
            zlib.crc32(self.machine.encode()),
            _SPLIT[self.split],
            _DOMAIN[self.domain],
            _LABEL[self.label],
            int(self.section),
            self.index,
        )


def _groups_2024(cfg: SynthConfig) -> list[tuple[str, str, str, int]]:
    c = cfg.counts()
    return [
        ("train", "source", "normal", c.source_train),
        ("train", "target", "normal", c.target_train),
        ("test", "source", "normal", c.test),
        ("test", "source", "anomaly", c.test),
        ("test", "target", "normal", c.test),
        ("test", "target", "anomaly", c.test),
    ]


def plan_clips(cfg: SynthConfig, machine: str) -> list[ClipSpec]:
    """All clips of one machine type, in file-name order.

    Attribute combinations are assigned round-robin within each (split, domain, label) group, so every
    combination of a domain is (nearly) equally represented.
    """
    mt = get_machine(machine)
    hidden = machine in cfg.hidden_attributes
    specs: list[ClipSpec] = []
    if cfg.naming == "2024":
        for split, domain, label, count in _groups_2024(cfg):
            combos = mt.attributes_for(domain)
            for i in range(1, count + 1):
                attrs = combos[(i - 1) % len(combos)]
                tail = HIDDEN if hidden else attribute_string(attrs)
                name = f"section_00_{domain}_{split}_{label}_{i:04d}_{tail}.wav"
                path = f"{machine}/{split}/{name}"
                specs.append(ClipSpec(machine, split, domain, label, "00", i, attrs, tail, path))
        return specs
    c = cfg.counts()
    # 2020 style: two machine individuals per type, each with its own share of the source conditions
    for k, mid in enumerate(IDS_2020):
        combos = mt.source_attributes[k :: len(IDS_2020)] or mt.source_attributes
        for split, label, count in (("train", "normal", c.source_train), ("test", "normal", c.test),
                                    ("test", "anomaly", c.test)):
            for i in range(count):
                name = f"{label}_id_{mid}_{i:08d}.wav"
                specs.append(ClipSpec(machine, split, "source", label, mid, i, combos[i % len(combos)], "",
                                      f"{machine}/{split}/{name}"))
    return specs


def render_clip(cfg: SynthConfig, spec: ClipSpec) -> tuple[np.ndarray, str]:
    """Render one clip as int16 samples ((n,) or (n, 2)); also return its anomaly kind ("" if normal)."""
    mt = get_machine(spec.machine)
    ss = np.random.SeedSequence(entropy=cfg.seed, spawn_key=spec.seed_key())
    rng, arng, rng_bg, rng_far = (np.random.default_rng(s) for s in ss.spawn(4))
    kind: str | None = None
    strength = 0.0
    if spec.label == "anomaly":
        kind = str(arng.choice(mt.anomalies))
        # each anomalous clip has its own severity, log-uniform from barely audible to obvious
        severity = float(np.exp(arng.uniform(np.log(SEVERITY_RANGE[0]), np.log(SEVERITY_RANGE[1]))))
        strength = cfg.anomaly_strength * mt.base_strength * severity
    ctx = ClipContext(rng, arng, spec.attributes, cfg.n_samples, cfg.sample_rate, kind, strength)
    machine = mt.renderer(ctx)
    audio = render_scene(machine, spec.domain, cfg.sample_rate, rng_bg, rng_far if cfg.stereo else None)
    return to_pcm16(audio), kind or ""


def _write_chunk(cfg: SynthConfig, out_dir: str, specs: Sequence[ClipSpec]) -> list[str]:
    kinds = []
    for spec in specs:
        pcm, kind = render_clip(cfg, spec)
        sf.write(Path(out_dir) / spec.path, pcm, cfg.sample_rate, subtype="PCM_16", format="WAV")
        kinds.append(kind)
    return kinds


def write_attributes_csv(out_dir: Path, machine: str, specs: Sequence[ClipSpec]) -> Path:
    """``<machine>/attributes_00.csv``: file_name,d1p,d1v,d2p,d2v,... for every clip of both splits."""
    rows = []
    for s in specs:
        pairs = [(HIDDEN, "")] if s.name_tail == HIDDEN else list(s.attributes)
        rows.append([s.path] + [x for pair in pairs for x in pair])
    n_pairs = max((len(r) - 1) // 2 for r in rows)
    header = ["file_name"] + [f"d{i}{c}" for i in range(1, n_pairs + 1) for c in ("p", "v")]
    path = out_dir / machine / "attributes_00.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(r + [""] * (len(header) - len(r)) for r in rows)
    return path


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    machines: Sequence[str] | None = None,
    naming: str = "2024",
    stereo: bool = False,
    hidden_attributes: Sequence[str] = (),
    anomaly_strength: float = 1.0,
    clip_seconds: float = 10.0,
    sample_rate: int = 16000,
    n_jobs: int = -1,
) -> pd.DataFrame:
    """Write a synthetic DCASE Task 2 style dataset and return its manifest.

    Layout (``naming="2024"``): ``<out>/<machine>/{train,test}/section_00_<domain>_<split>_<label>_<NNNN>_
    <attributes>.wav`` (numbering from 0001 per domain, split and label) plus ``<machine>/attributes_00.csv``.
    ``naming="2020"``: ``<out>/<machine>/{train,test}/<label>_id_<ID>_<NNNNNNNN>.wav`` for machine IDs 00
    and 02 (numbering from 0), source domain only, no attributes csv. ``synth_config.json`` in ``<out>``
    records every parameter.

    Counts per machine type follow DCASE at ``scale=1``: 990 source and 10 target training clips, and 50
    normal plus 50 anomalous test clips per domain. Other scales multiply these and round, with floors of
    20 source training, 3 target training and 5 test clips per domain and label. With 2020 naming each ID
    gets the source-train count for training and the per-domain test counts for testing.

    ``stereo`` writes two channels (left: near mic, identical to the mono clip; right: far mic).
    ``hidden_attributes`` lists machine types whose names end in ``noAttribute``. ``anomaly_strength``
    scales every anomaly (0 makes anomalous clips statistically identical to normal ones). The output is
    a deterministic function of the parameters other than ``n_jobs``.

    Returns one row per written wav: path (relative to ``out_dir``), machine, split, section, domain,
    label, attributes (the name tail), anomaly_kind ("" for normal clips).
    """
    cfg = make_config(
        machines=machines, seed=seed, scale=scale, naming=naming, stereo=stereo,
        hidden_attributes=tuple(hidden_attributes), anomaly_strength=anomaly_strength,
        clip_seconds=clip_seconds, sample_rate=sample_rate, n_jobs=n_jobs,
    )
    out = Path(out_dir)
    specs: list[ClipSpec] = []
    for machine in cfg.machines:
        machine_specs = plan_clips(cfg, machine)
        for split in ("train", "test"):
            (out / machine / split).mkdir(parents=True, exist_ok=True)
        if cfg.naming == "2024":
            write_attributes_csv(out, machine, machine_specs)
        specs.extend(machine_specs)
    chunks = [specs[i : i + _CHUNK] for i in range(0, len(specs), _CHUNK)]
    results = Parallel(n_jobs=n_jobs)(delayed(_write_chunk)(cfg, str(out), chunk) for chunk in chunks)
    kinds = [k for chunk_kinds in results for k in chunk_kinds]
    cfg.write(out)
    return pd.DataFrame(
        {
            "path": [s.path for s in specs],
            "machine": [s.machine for s in specs],
            "split": [s.split for s in specs],
            "section": [s.section for s in specs],
            "domain": [s.domain for s in specs],
            "label": [s.label for s in specs],
            "attributes": [s.name_tail for s in specs],
            "anomaly_kind": kinds,
        }
    )
