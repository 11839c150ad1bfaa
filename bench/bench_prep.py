"""Benchmark of data_prep: how close the parallel, writing pipeline gets to the bare decode+feature floor.

    python bench/bench_prep.py --clips 1000 --jobs 2            # floor vs end-to-end, one size
    python bench/bench_prep.py --sweep 1000,4000,8000 --jobs 2  # peak memory per size (must stop growing)
    python bench/bench_prep.py --clips 1000 --jobs 2 --profile  # plus a cProfile of the writer process

Synthetic 10 s, 16 kHz, 16-bit mono clips in DCASE 2024 naming are written to a temporary folder (or
`--keep DIR`). Every measurement runs in a fresh Python process, so its peak memory (ru_maxrss) and its
timings are its own. See bench/README.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE = Path(__file__).resolve().parents[1] / "source"
sys.path.insert(0, str(SOURCE))  # run from a checkout without installing

RATE = 16000
MACHINES = ("fan", "valve")
TEST_EVERY = 10  # one clip in ten goes to test/, so each machine gets a train and a test shard


# ---------------------------------------------------------------------------------------------------
# synthetic clips


def generate(root: Path, n_clips: int, seconds: float = 10.0, seed: int = 0) -> list[Path]:
    """Write `n_clips` clips (a few machine-like tones plus noise) under `root/bench/<machine>/...`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    # A few precomputed partials per machine; clips mix them with random gains so they differ cheaply.
    partials = {m: [np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 4000, size=4)] for m in MACHINES}
    paths = []
    for i in range(n_clips):
        machine = MACHINES[i % len(MACHINES)]
        number = i // len(MACHINES) + 1  # DCASE 2024 numbers from 0001
        gains = rng.uniform(0.02, 0.12, size=4)
        data = sum(g * p for g, p in zip(gains, partials[machine], strict=True))
        data = data + 0.03 * rng.standard_normal(len(t))
        if number % TEST_EVERY == 0:
            label = ("normal", "anomaly")[number // TEST_EVERY % 2]
            name = f"section_00_source_test_{label}_{number:04d}_noAttribute.wav"
            folder = root / "bench" / machine / "test"
        else:
            name = f"section_00_source_train_normal_{number:04d}_noAttribute.wav"
            folder = root / "bench" / machine / "train"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, np.round(np.clip(data, -1, 1) * 32767).astype(np.int16), RATE,
                 subtype="PCM_16")
        paths.append(folder / name)
    return paths


def link_subset(paths: list[Path], pool: Path, target: Path) -> None:
    """A raw tree holding the first len(paths) clips of `pool`, as hard links (no extra disk)."""
    for path in paths:
        dest = target / path.relative_to(pool)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, dest)


# ---------------------------------------------------------------------------------------------------
# measurements (each in its own process)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _children() -> list[Path]:
    """/proc folders of this process's live children (the joblib workers and loky's helpers)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:  # field 4: the parent pid
                found.append(stat.parent)
        except (OSError, IndexError):
            continue  # the process ended while we looked
    return found


def _children_peak_rss_mib() -> float:
    """Largest peak RSS (VmHWM) among the live child processes: the joblib workers."""
    peak = 0.0
    for proc in _children():
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by the live child processes."""
    ticks = 0
    for proc in _children():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_floor(raw: Path) -> dict:
    """Decode + segment + log-mel of every clip, one process, one thread, nothing written."""
    from asd.cache.audio import read_clip
    from asd.cache.features import FeatureConfig, segment_features
    from asd.cache.heap import keep_freed_memory
    from asd.cache.melspec import one_thread_each

    keep_freed_memory()  # as run_prep does: without it the floor pays ~600 page faults per clip
    config = FeatureConfig()
    paths = sorted(str(p) for p in raw.rglob("*.wav"))
    segment_features(np.zeros(config.segment_samples, np.int16), config)  # build the mel filterbank first
    segments = 0
    with one_thread_each():  # what each data_prep worker does
        start, cpu = time.perf_counter(), _self_cpu_s()
        for path in paths:
            segments += len(segment_features(read_clip(path, config).samples, config).starts)
        seconds, cpu = time.perf_counter() - start, _self_cpu_s() - cpu
    return {"clips": len(paths), "segments": segments, "seconds": seconds,
            "clips_per_s": len(paths) / seconds, "cpu_ms_per_clip": 1000 * cpu / len(paths),
            "rss_main_mib": _peak_rss_mib()}


def measure_prep(raw: Path, out: Path, jobs: int, profile: bool) -> dict:
    """End to end `asd.cache.build.run_prep`: worker start-up, decode, features, transfer, HDF5 writing."""
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    from asd.cache.build import PrepConfig, process_clips, run_prep
    from asd.cache.features import FeatureConfig

    # Start the workers (and their torch import) apart, so start-up cost shows separately.
    start = time.perf_counter()
    if jobs != 1:
        # same backend hint as run_prep (threads unless joblib.parallel_config says otherwise)
        Parallel(n_jobs=jobs, prefer="threads")(delayed(process_clips)([], FeatureConfig())
                                                for _ in range(max(jobs, 1)))
    startup = time.perf_counter() - start
    cfg = PrepConfig(raw_dir=str(raw), out_dir=str(out), jobs=jobs, force=True)
    profiler = cProfile.Profile() if profile else None
    start, main_cpu, workers_cpu = time.perf_counter(), _self_cpu_s(), _children_cpu_s()
    if profiler:
        profiler.enable()
    summary = run_prep(cfg, show_progress=False)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    main_cpu, workers_cpu = _self_cpu_s() - main_cpu, _children_cpu_s() - workers_cpu
    workers_peak = _children_peak_rss_mib()
    get_reusable_executor().shutdown(wait=True)
    written = sum(p.stat().st_size for p in out.rglob("*.h5"))
    result = {
        "clips": summary.clips, "segments": summary.segments, "shards": len(summary.shards_written),
        "startup_s": startup, "seconds": seconds, "clips_per_s": summary.clips / seconds,
        "cold_clips_per_s": summary.clips / (seconds + startup), "mb_written": written / 1e6,
        "mb_per_s": written / 1e6 / seconds, "rss_main_mib": _peak_rss_mib(),
        "main_cpu_ms_per_clip": 1000 * main_cpu / summary.clips,
        "workers_cpu_ms_per_clip": 1000 * workers_cpu / summary.clips,
        # jobs=1 has no workers: joblib runs the tasks in this process
        "rss_worker_mib": 0.0 if jobs == 1 else max(
            workers_peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        result["profile"] = text.getvalue()
    return result


def measure_command(raw: Path, out: Path, jobs: int) -> dict:
    """`python source/data_prep.py` as a user runs it: interpreter start, imports, scan, work, exit."""
    command = [sys.executable, str(SOURCE / "data_prep.py"), "--raw-dir", str(raw), "--out-dir", str(out),
               "--jobs", str(jobs), "--force", "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"data_prep failed:\n{done.stderr[-3000:]}")
    clips = int(done.stdout.split(" clips ->")[0].rsplit(" ", 1)[-1])
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
            "rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_measurement(kind: str, raw: Path, out: Path | None = None, jobs: int = 1, profile: bool = False) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    command = [sys.executable, __file__, "--measure", kind, "--raw", str(raw), "--jobs", str(jobs)]
    if out is not None:
        command += ["--out", str(out)]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# reports


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def bench_one(root: Path, n_clips: int, jobs: int, profile: bool) -> None:
    raw = root / "raw"
    start = time.perf_counter()
    generate(raw, n_clips)
    print(f"generated {n_clips} clips of 10 s in {time.perf_counter() - start:.1f} s under {raw}")
    floor = run_measurement("floor", raw)
    prep = run_measurement("prep", raw, root / "processed", jobs, profile)
    command = run_measurement("command", raw, root / "processed_cli", jobs)
    print()
    print(_table(
        ["measure", "jobs", "clips", "segments", "wall s", "clips/s", "MB/s written", "CPU ms/clip main",
         "CPU ms/clip workers", "peak MiB"],
        [["floor", "1", str(floor["clips"]), str(floor["segments"]), f"{floor['seconds']:.2f}",
          f"{floor['clips_per_s']:.1f}", "-", f"{floor['cpu_ms_per_clip']:.2f}", "-",
          f"{floor['rss_main_mib']:.0f}"],
         ["run_prep", str(jobs), str(prep["clips"]), str(prep["segments"]), f"{prep['seconds']:.2f}",
          f"{prep['clips_per_s']:.1f}", f"{prep['mb_per_s']:.1f}", f"{prep['main_cpu_ms_per_clip']:.2f}",
          f"{prep['workers_cpu_ms_per_clip']:.2f}", f"{max(prep['rss_main_mib'], prep['rss_worker_mib']):.0f}"],
         ["data_prep.py", str(jobs), str(command["clips"]), "-", f"{command['seconds']:.2f}",
          f"{command['clips_per_s']:.1f}", "-", "-", "-", f"{command['rss_mib']:.0f}"]],
    ))
    print("\nfloor: one process, one thread, decode + segment + log-mel, nothing written; run_prep: the "
          "library call (scan, decode, features, verified HDF5 writing); data_prep.py: the command as a user "
          "runs it, interpreter start and imports included")
    print(f"shards: {prep['shards']}, {prep['mb_written']:.0f} MB")
    total_cpu = prep["main_cpu_ms_per_clip"] + prep["workers_cpu_ms_per_clip"]
    print(f"CPU per clip, run_prep (all threads) / floor = {total_cpu / floor['cpu_ms_per_clip']:.2f}")
    ratio = prep["clips_per_s"] / (jobs * floor["clips_per_s"])
    cold_ratio = command["clips_per_s"] / (jobs * floor["clips_per_s"])
    peak = max(prep["rss_main_mib"], prep["rss_worker_mib"], command["rss_mib"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    checks = [
        (f"run_prep / (floor x {jobs} jobs) = {ratio:.2f}", ratio >= 0.67, ">= 0.67"),
        (f"data_prep.py / (floor x {jobs} jobs) = {cold_ratio:.2f}", cold_ratio >= 0.67, ">= 0.67"),
        (f"data_prep.py end to end = {command['clips_per_s']:.0f} clips/s", command["clips_per_s"] >= 300,
         ">= 300 clips/s of 10 s clips with --jobs 2, on an idle 2-core CPU"),
        (f"peak RSS = {peak:.0f} MiB", peak <= 1024, "<= 1024 MiB"),
    ]
    print()
    for text, met, target in checks:
        print(f"  {text:45s} target {target}: {'MET' if met else 'NOT MET'}")
    print(f"load average now {load} on {os.cpu_count()} cores: absolute clips/s depend on what else runs; "
          "the ratios are measured in the same run")
    if profile:
        print("\ncProfile of the writer (main) thread, by own time:\n" + prep["profile"])


def bench_sweep(root: Path, sizes: list[int], jobs: int) -> None:
    pool = root / "pool"
    start = time.perf_counter()
    paths = generate(pool, max(sizes))
    print(f"generated {max(sizes)} clips of 10 s in {time.perf_counter() - start:.1f} s under {pool}")
    rows = []
    for n in sizes:
        raw, out = root / f"raw_{n}", root / f"processed_{n}"
        link_subset(paths[:n], pool, raw)
        result = run_measurement("prep", raw, out, jobs)
        rows.append([str(n), str(result["segments"]), f"{result['seconds']:.1f}", f"{result['clips_per_s']:.1f}",
                     f"{result['mb_written']:.0f}", f"{result['mb_per_s']:.1f}", f"{result['rss_main_mib']:.0f}",
                     f"{result['rss_worker_mib']:.0f}"])
        print(f"  {n} clips done in {result['seconds']:.1f} s", flush=True)
        shutil.rmtree(out)  # keep disk use to one size at a time
        shutil.rmtree(raw)
    print()
    print(_table(["clips", "segments", "wall s", "clips/s", "MB written", "MB/s", "peak main MiB",
                  "peak worker MiB"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000, help="number of 10 s clips to generate")
    parser.add_argument("--jobs", type=int, default=2, help="data_prep worker processes")
    parser.add_argument("--sweep", default="", help="comma-separated clip counts: end-to-end peak memory per size")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--profile", action="store_true", help="cProfile the writer process")
    # internal: one measurement in this (fresh) process, JSON on the last stdout line
    parser.add_argument("--measure", choices=["floor", "prep", "command"], help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure == "floor":
        print(json.dumps(measure_floor(args.raw)))
        return
    if args.measure == "prep":
        print(json.dumps(measure_prep(args.raw, args.out, args.jobs, args.profile)))
        return
    if args.measure == "command":
        print(json.dumps(measure_command(args.raw, args.out, args.jobs)))
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        root, cleanup = args.keep, None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="bench_prep_")
        root = Path(cleanup.name)
    try:
        if args.sweep:
            bench_sweep(root, sorted(int(n) for n in args.sweep.split(",")), args.jobs)
        else:
            bench_one(root, args.clips, args.jobs, args.profile)
    finally:
        if cleanup is not None:
            cleanup.cleanup()


if __name__ == "__main__":
    main()
