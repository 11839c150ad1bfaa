"""Shared test helpers: tiny wav files in any DCASE naming, a tiny dataset tree, the real recordings, and
the session's prepared synthetic dataset with two finished runs (prepared and run once, through the real
entry scripts, and read by every test that needs a cache or a run folder).

Everything here writes into pytest's tmp folders; the real DCASE recordings are only read, from
`../shared/fixtures/dcase-real` next to the project root, and tests that need them skip when absent.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Importable without installing the package, like the entry scripts in source/.
if str(PROJECT_ROOT / "source") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "source"))

REAL_ROOT = PROJECT_ROOT.parent / "shared" / "fixtures" / "dcase-real"
requires_real = pytest.mark.skipif(not REAL_ROOT.is_dir(), reason=f"real DCASE fixtures absent ({REAL_ROOT})")

RATE = 16000


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in this process: the tests' tensors are tiny, so more threads gain nothing, and on
    a machine busy with other work they would fight over its cores (the command line's default is 1 too)."""
    import torch

    torch.set_num_threads(1)


def tone_noise(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0,
                freq: float = 440.0) -> np.ndarray:
    """A float signal in [-0.5, 0.5]: a tone plus noise, so every segment differs from its neighbours.

    Shape `[n]` for mono, `[n, channels]` otherwise; channel c has tone `freq * (c + 1)` so channels differ.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    columns = [0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) + 0.1 * rng.standard_normal(n)
               for c in range(channels)]
    data = np.clip(np.stack(columns, axis=1), -0.5, 0.5)
    return data[:, 0] if channels == 1 else data


def write_wav(path: Path, seconds: float = 2.0, rate: int = RATE, channels: int = 1,
              subtype: str = "PCM_16", seed: int = 0, freq: float = 440.0) -> np.ndarray:
    """Write a wav (parents created) and return what a 16-bit reader gets back: int16 for PCM_16 files,
    else the float data written. Any DCASE name works: the caller chooses `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tone_noise(seconds, rate, channels, seed, freq)
    if subtype == "PCM_16":
        ints = np.round(data * 32767).astype(np.int16)
        sf.write(path, ints, rate, subtype=subtype)
        return ints
    sf.write(path, data.astype(np.float32), rate, subtype=subtype)
    return data.astype(np.float32)


def dcase2024_name(section: int, domain: str, split: str, label: str, number: int,
                   attributes: str = "noAttribute") -> str:
    """A DCASE 2022-2025 style file name."""
    return f"section_{section:02d}_{domain}_{split}_{label}_{number:04d}_{attributes}.wav"


@pytest.fixture
def make_wav() -> Callable[..., np.ndarray]:
    """The `write_wav` helper, as a fixture."""
    return write_wav


def build_dataset(root: Path, machines: dict[str, tuple[int, int]], seconds: float = 2.0) -> Path:
    """A small DCASE 2024 style tree `root/<machine>/{train,test}/`: per machine (n_train, n_test) clips.

    Train clips are source normals (the last one a target normal); test clips alternate normal/anomaly
    and source/target. Returns `root`.
    """
    seed = 0
    for machine, (n_train, n_test) in machines.items():
        for i in range(n_train):
            domain = "target" if i == n_train - 1 and n_train > 1 else "source"
            name = dcase2024_name(0, domain, "train", "normal", i + 1, f"spd_{i}")
            write_wav(root / machine / "train" / name, seconds=seconds, seed=seed)
            seed += 1
        for i in range(n_test):
            domain = ("source", "target")[i // 2 % 2]
            label = ("normal", "anomaly")[i % 2]
            name = dcase2024_name(0, domain, "test", label, i + 1)
            write_wav(root / machine / "test" / name, seconds=seconds, seed=seed)
            seed += 1
    return root


@pytest.fixture
def make_dataset() -> Callable[..., Path]:
    """The `build_dataset` helper, as a fixture."""
    return build_dataset


def assert_shard_matches_sources(shard_path: Path, raw_root: Path) -> None:
    """Every stored segment equals the source samples at its start sample, and its log-mel equals its
    frames of `asd.cache.features.clip_log_mel` of the whole (zero-padded) clip. For 16-bit mono clips at the
    shard's rate."""
    from asd.cache.features import clip_log_mel, first_frames
    from asd.cache.shard import Shard

    shard = Shard(shard_path)
    config = shard.feature_config
    length = config.segment_samples
    clips, segments = shard.clips, shard.segments
    for index, clip in clips.iterrows():
        samples, rate = sf.read(raw_root / clip["rel_path"], dtype="int16")
        assert rate == config.sample_rate
        assert clip["n_samples"] == len(samples)
        rows = shard.clip_segments(index)
        starts = segments["start_sample"].to_numpy()[rows]
        padded = np.zeros(max(len(samples), int(starts[-1]) + length), dtype=np.int16)
        padded[:len(samples)] = samples
        expected = np.stack([padded[start:start + length] for start in starts])
        np.testing.assert_array_equal(shard.waveform(rows), expected, err_msg=clip["file_name"])
        frames = first_frames(starts, len(padded), config)
        np.testing.assert_array_equal(segments["first_frame"].to_numpy()[rows], frames)
        whole = clip_log_mel(padded, config)
        cut = np.stack([whole[:, f:f + config.n_frames] for f in frames])
        np.testing.assert_allclose(shard.logmel(rows), cut, rtol=0, atol=1e-3, err_msg=clip["file_name"])
    shard.close()


@pytest.fixture
def check_round_trip() -> Callable[[Path, Path], None]:
    """The `assert_shard_matches_sources` helper, as a fixture."""
    return assert_shard_matches_sources


def prepared_synthetic_machine(tmp_path_factory: pytest.TempPathFactory, machine: str, scale: float,
                               anomaly_strength: float, clip_seconds: float = 2.0) -> Path:
    """One synthetic machine type (seed 0), prepared with the default features: its processed folder."""
    from asd.cache.build import PrepConfig, run_prep
    from asd.dataset.synth import generate_dataset

    raw = tmp_path_factory.mktemp("raw") / "synth"
    generate_dataset(raw, seed=0, scale=scale, machines=[machine], anomaly_strength=anomaly_strength,
                     clip_seconds=clip_seconds, n_jobs=1)
    out = tmp_path_factory.mktemp("processed")
    run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(out), jobs=1), show_progress=False)
    return next(out.rglob(machine))


def run_script(script: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python source/<script> ARGS` as a user runs it (this interpreter), output captured."""
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "source" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


SYNTH_MACHINES = ("fan", "valve")


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's synthetic dataset: fan and valve, 2 s clips, loud anomalies, made once and prepared
    once through `source/data_prep.py`. Tests read it and never write into it (copy it first)."""
    from asd.dataset.synth import generate_dataset

    base = tmp_path_factory.mktemp("synth-set")
    generate_dataset(base / "raw" / "synth", seed=1, scale=0.03, machines=list(SYNTH_MACHINES), clip_seconds=2.0,
                     anomaly_strength=8.0, n_jobs=1)
    done = run_script("data_prep.py", "--raw-dir", base / "raw", "--out-dir", base / "processed", "--jobs", "1",
                      "--quiet")
    assert done.returncode == 0, done.stderr
    return {"base": base, "raw": base / "raw", "processed": base / "processed" / "synth"}


def _finished_run(synth_set: dict[str, Path], name: str, *options: str) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = synth_set["base"] / "runs" / name
    done = run_script("main.py", "run", "--processed-dir", synth_set["processed"], "--output-dir", run_dir, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


@pytest.fixture(scope="session")
def gmm_run(synth_set: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """`python source/main.py run --model gmm` on the session's dataset: its folder and output."""
    return _finished_run(synth_set, "gmm", "--model", "gmm")


@pytest.fixture(scope="session")
def default_run(synth_set: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """`python source/main.py run` with the default model (`auto`; `gmm` alone on this small set)."""
    return _finished_run(synth_set, "default")


@pytest.fixture(scope="session")
def ae_run(synth_set: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """The same with the autoencoder for two epochs (a model with a loss curve)."""
    return _finished_run(synth_set, "ae", "--model", "ae", "--epochs", "2")


# --- shards compared, read-only folders (the reliability cases share them) -------------------------------------
VOLATILE_SHARD_ATTRS = {"created_utc", "source_digest", "source_root"}  # when and from where, not what


def shard_contents(path: Path) -> dict:
    """Everything a shard holds except its creation time, source location and input digest."""
    import h5py

    found: dict = {}
    with h5py.File(path, "r") as file:
        found["attrs"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in file.attrs.items()
                          if k not in VOLATILE_SHARD_ATTRS}

        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                found[name] = item.asstr()[()].tolist() if item.dtype.kind == "O" else item[()]
        file.visititems(visit)
    return found


def assert_same_shard(a: Path, b: Path) -> None:
    """Two shards hold the same data and settings (what rebuilding one must give back)."""
    ca, cb = shard_contents(a), shard_contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        if isinstance(ca[key], np.ndarray):
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{b}: {key}")
        else:
            assert ca[key] == cb[key], f"{b}: {key}"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be written to: a read-only tmpfs as root (root ignores permissions), else
    mode 0o555. Skips when root cannot mount one."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
