"""Profile the pieces of one autoencoder epoch on a prepped training shard (1 torch thread by default).

    python bench/profile_ae_epoch.py SHARD.h5 [--threads 1] [--batch-sizes 256,512,1024]

Prints, per epoch of the shard's training segments: streaming block-shuffled draws from HDF5 and copying
them into 5-frame vectors (the streamed path), reading the log-mel once into memory (one-off), gathering
shuffled batches from the strided in-memory view (the in-memory path), and the model's own arithmetic
(forward, backward, Adam) per batch size, each the best of a few repetitions; then the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asd.cache.reading import load_frames, segment_rows_of, split_train_validation, stream_segments  # noqa: E402
from asd.cache.shard import Shard  # noqa: E402
from asd.models.autoencoder_net import DcaseAutoencoder, frames_to_vectors, strided_vectors  # noqa: E402
from asd.models.training import Adam  # noqa: E402
from timing import best_of  # noqa: E402  (bench/timing.py, beside this script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shard", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="256,512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shard = Shard(args.shard)
    train_clips, _ = split_train_validation(shard.clips, 0.1, 0)
    rows = segment_rows_of(shard, train_clips)
    rng = np.random.default_rng(0)

    def streamed() -> None:
        for mels, _ in stream_segments(shard, rows, rng):
            frames_to_vectors(torch.from_numpy(mels))

    start = time.perf_counter()
    frames = torch.from_numpy(load_frames(shard, rows))
    load_seconds = time.perf_counter() - start
    view = strided_vectors(frames)
    n_windows = view.shape[1]
    n_vectors = view.shape[0] * n_windows

    def gathered() -> None:
        order = torch.randperm(n_vectors)
        for first in range(0, n_vectors, 256):
            index = order[first:first + 256]
            view[index // n_windows, index % n_windows].float()

    print(f"{len(rows)} training segments, {n_vectors} vectors per epoch, {args.threads} thread(s)")
    print(f"streamed: HDF5 draws + vector copies   {best_of(streamed, args.repeats):7.2f} s/epoch")
    print(f"in memory: read once                   {load_seconds:7.2f} s (once)")
    print(f"in memory: batches from strided view   {best_of(gathered, args.repeats):7.2f} s/epoch")
    network = DcaseAutoencoder()
    optimizer = Adam(network.parameters())
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch, n_steps = torch.randn(batch_size, 640), max(1, 51200 // batch_size)

        def steps(batch=batch, n_steps=n_steps) -> None:
            for _ in range(n_steps):
                loss = torch.nn.functional.mse_loss(network(batch), batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        seconds = best_of(steps, args.repeats) / (n_steps * batch_size) * n_vectors
        print(f"model arithmetic, batch {batch_size:5d}        {seconds:7.2f} s/epoch")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
