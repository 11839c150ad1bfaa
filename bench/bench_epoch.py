"""Benchmark: one training epoch of a learned model's network, and its embedding speed, on N clips of a
prepared training shard (the figures the README quotes for `twobranch` and `embed`).

    python bench/bench_epoch.py --shard data/processed/synth/fan/train.h5 [--clips 1000] [--model twobranch]
                                [--epochs 1] [--threads 1] [--device cpu]

Reads the clips once (as the detector does), then times `--epochs` epochs of the model's own training
function and one pass of embedding every clip; prints seconds per epoch per 1,000 clips, clips/s when
embedding, and the peak resident memory of the process. Machines are noisy: compare runs made one after
the other on the same machine, and read the seconds as a ratio.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source"))

from asd.cache.shard import Shard  # noqa: E402
from asd.models.device import resolve_device, set_threads  # noqa: E402
from asd.models.embedding_data import clip_class_names  # noqa: E402
from asd.models.registry import make_detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shard", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--model", choices=("twobranch", "embed"), default="twobranch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    shard = Shard(args.shard)
    clips = shard.clips.index[shard.clips["label"] != "anomaly"].to_numpy()[:args.clips]
    names = clip_class_names(shard.clips.loc[clips]).astype(str)
    table = sorted(set(names.tolist()))
    labels = np.searchsorted(np.asarray(table), names)
    detector = make_detector(args.model)
    from asd.models.base import FitConfig

    fit = FitConfig(epochs=args.epochs, seed=0, device=args.device, threads=args.threads)
    start = time.perf_counter()
    network, history = detector._train_fold([(shard, clips)], labels, len(table), fit, 0, device,
                                            lambda line: None, desc=args.model)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        detector._embed(network, shard, clips, device)
    embed_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model} on {len(clips)} clips of {shard.path} ({len(table)} classes), {args.threads} thread(s), "
          f"{device}: training {train_seconds:.1f} s for {args.epochs} epoch(s) (reading the clips included) = "
          f"{train_seconds / args.epochs / len(clips) * 1000:.1f} s per epoch per 1,000 clips; embedding "
          f"{len(clips) / embed_seconds:.1f} clips/s; peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
