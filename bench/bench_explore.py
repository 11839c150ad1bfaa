"""Benchmark of `explore`: throughput, and whether its memory stays flat as the dataset grows.

    python bench/bench_explore.py --sweep 800,3200 --seconds 2

For each size, synthetic clips (bench_prep's generator: DCASE 2024 names, two machine types, one clip in
ten in test/) are written and prepped into a temporary folder, then `asd.reports.explore.explore` runs in a fresh
Python process that reports its wall time, clips/s, the peak of Python + numpy allocations during the run
(tracemalloc: flat when nothing is kept per clip) and its ru_maxrss (which includes torch's import).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "source"
sys.path.insert(0, str(SOURCE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MEASURE = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from asd.reports.explore import ExploreConfig, explore
import asd.cache.shard, asd.cache.features  # torch and h5py imported before measuring: the figure is explore's own
config = ExploreConfig(processed_dir=sys.argv[2], out_dir=sys.argv[3])
tracemalloc.start()
start = time.perf_counter()
pages = explore(config, echo=lambda line: None)
wall = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"wall": wall, "traced_peak_mib": peak / 2**20, "page_mib": pages[0].stat().st_size / 2**20,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(n_clips: int, seconds: float, work: Path) -> dict:
    from asd.cache.build import PrepConfig, run_prep
    from bench_prep import generate

    raw, processed = work / f"raw{n_clips}", work / f"processed{n_clips}"
    generate(raw, n_clips, seconds=seconds)
    run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(processed), jobs=1))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(SOURCE), str(processed), str(work / "pages")],
                          capture_output=True, text=True, check=True)
    return {"clips": n_clips, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="800,3200", help="Comma-separated numbers of clips.")
    parser.add_argument("--seconds", type=float, default=2.0, help="Length of each clip.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sweep.split(",")]
    print(f"{'clips':>6} {'wall s':>8} {'clips/s':>8} {'traced peak MiB':>16} {'ru_maxrss MiB':>14} {'page MiB':>9}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row = measure(n, args.seconds, Path(tmp))
            rows.append(row)
            print(f"{n:>6} {row['wall']:>8.1f} {n / row['wall']:>8.1f} {row['traced_peak_mib']:>16.1f} "
                  f"{row['maxrss_mib']:>14.0f} {row['page_mib']:>9.1f}", flush=True)
    if len(rows) > 1:
        print(f"traced peak ratio {rows[-1]['traced_peak_mib'] / rows[0]['traced_peak_mib']:.2f} for "
              f"{sizes[-1] / sizes[0]:.0f}x the clips (flat = about 1)")


if __name__ == "__main__":
    main()
