"""What verifying a shard costs: training reads with and without the per-row checksums, data_prep's checks
of an existing shard, and HDF5's fletcher32 filter (the alternative) on the same data.

    python bench/bench_integrity.py data/processed/<dataset>/<machine>/train.h5 [--repeat 3]

Reads come from the page cache after the first pass (the case where checksum CPU shows most); each figure
is the best of `--repeat` passes, in the same process, alternating, so the machine's load hits all alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source"))  # run from a checkout

from timing import best_of  # noqa: E402  (bench/timing.py, beside this script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shard", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--block", type=int, default=512, help="segments per read (the scorers' batch)")
    args = parser.parse_args()

    from asd.cache.integrity import stamp_matches
    from asd.cache.reading import read_rows
    from asd.cache.shard import Shard, verify_shard

    shard = Shard(args.shard)
    n = shard.n_segments
    mb = shard.file["logmel"].nbytes / 1e6
    rows = np.arange(n)

    def verified() -> None:
        for start in range(0, n, args.block):
            read_rows(shard, rows[start:start + args.block])

    def unverified() -> None:  # what read_rows did before: the same reads and copy, no checksums
        dataset = shard.file["logmel"]
        for start in range(0, n, args.block):
            np.concatenate([dataset[start:start + args.block]])

    verified()  # warm the page cache and the checksum column
    plain_s, checked_s = [], []
    for _ in range(args.repeat):
        plain_s.append(best_of(unverified, 1))
        checked_s.append(best_of(verified, 1))
    plain, checked = min(plain_s), min(checked_s)
    print(f"{args.shard}: {n} segments, logmel {mb:.0f} MB")
    print(f"  training read of every logmel row, {args.block} at a time: unverified {plain:.3f} s "
          f"({mb / plain:.0f} MB/s), verified {checked:.3f} s ({mb / checked:.0f} MB/s): "
          f"+{100 * (checked / plain - 1):.1f} %")
    fast = best_of(lambda: verify_shard(args.shard, full=False), args.repeat)
    full = best_of(lambda: verify_shard(args.shard, full=True), args.repeat)
    size = args.shard.stat().st_size / 1e6
    print(f"  data_prep's check of an existing shard: header + tables {1000 * fast:.0f} ms; every row "
          f"{full:.3f} s ({size / full:.0f} MB/s of {size:.0f} MB); stamp matches: {stamp_matches(args.shard)}")

    # fletcher32: the same rows written through HDF5's filter (chunked as data_prep chunks), then read back
    data = shard.file["logmel"][()]
    chunks = shard.file["logmel"].chunks
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in (("plain", {}), ("fletcher32", {"fletcher32": True})):
            path = Path(tmp) / f"{name}.h5"

            def write(path=path, options=options) -> None:
                with h5py.File(path, "w") as file:
                    file.create_dataset("logmel", data=data, chunks=chunks, **options)

            write_s = best_of(write, args.repeat)
            with h5py.File(path, "r") as file:
                dataset = file["logmel"]
                read_s = best_of(lambda dataset=dataset: [dataset[s:s + args.block] for s in range(0, n, args.block)],
                                 args.repeat)
                scattered = np.sort(np.random.default_rng(0).choice(n, size=min(n, 2000), replace=False))
                scatter_s = best_of(lambda dataset=dataset, rows=scattered: [dataset[int(r)] for r in rows],
                                    args.repeat)
            print(f"  h5py {name:<10}: write {write_s:.3f} s, sequential read {read_s:.3f} s, "
                  f"{len(scattered)} scattered rows {scatter_s:.3f} s")


if __name__ == "__main__":
    main()
