"""Benchmark: train and test one model on a full-scale synthetic machine type.

    python bench/bench_train.py [--model ae] [--machine fan] [--epochs 5] [--scale 1.0] [--keep DIR]

Generates the machine type (DCASE size at --scale 1.0: 1000 training clips, 200 test clips of 10 s),
runs data_prep, then trains and tests through the same functions `python source/main.py` uses, and prints
training seconds per epoch, scoring clips/s, peak memory and the quality figures. Every stage is timed
in this one run, so the figures compare with each other; compare across machines only as ratios.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source"))

from asd.detector import TrainConfig  # noqa: E402
from asd.metrics import dataset_score, metrics_table  # noqa: E402
from asd.pipeline import discover, test_machine, train_machine  # noqa: E402
from asd.prep import PrepConfig, run_prep  # noqa: E402
from asd.synth import generate_dataset  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ae")
    parser.add_argument("--machine", default="fan")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Work here (reused if it holds the data).")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="asd-bench-train-"))
    raw, processed = work / "raw", work / "processed"
    if not (raw / "synth" / args.machine).is_dir():
        start = time.perf_counter()
        generate_dataset(raw / "synth", seed=0, scale=args.scale, machines=[args.machine], n_jobs=args.jobs)
        print(f"synth        {time.perf_counter() - start:8.1f} s")
    start = time.perf_counter()
    summary = run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(processed), jobs=args.jobs), show_progress=False)
    prep_seconds = time.perf_counter() - start
    print(f"data_prep    {prep_seconds:8.1f} s  ({summary.clips} clips prepared, "
          f"{len(summary.shards_skipped)} shards reused)")

    (item,) = discover(processed / "synth", [args.machine])
    train = TrainConfig(epochs=args.epochs, seed=0, device="auto")
    run_dir = work / f"run_{args.model}"
    memory_before = peak_rss_mib()
    start = time.perf_counter()
    train_machine(item, run_dir, args.model, train)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predictions, rules = test_machine(item, run_dir, train)
    score_seconds = time.perf_counter() - start
    table = metrics_table(predictions, rules)
    official = dataset_score(predictions, rules)["official score"]

    print(f"train        {train_seconds:8.1f} s  = {train_seconds / args.epochs:.2f} s/epoch over {args.epochs} "
          f"epochs (includes threshold fitting and saving)")
    print(f"test         {score_seconds:8.1f} s  = {len(predictions) / score_seconds:.1f} clips/s scored")
    print(f"peak memory  {peak_rss_mib():8.0f} MiB (before training: {memory_before:.0f} MiB)")
    row = table.iloc[0]
    print(f"quality      AUC(source) {row['AUC (source)']:.4f}  AUC(target) {row['AUC (target)']:.4f}  "
          f"pAUC {row['pAUC']:.4f}  official score {official:.4f}")
    print(f"work folder  {work}")


if __name__ == "__main__":
    main()
