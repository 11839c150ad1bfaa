"""Benchmark: `gmm` on one machine type, as `asd.fit` and `asd.score` run it: fit and score wall time, test
clips per second, the time of each kind of feature (log-mel poolings, short-time spectra) and peak memory.

    python bench/bench_gmm.py --processed data/processed/synth --machine fan [--no-spectrum] [--repeat N]

It imports the `source/` beside it, so a comparison with another version runs this script from each
checkout in turn, several times (the machine's speed drifts: compare medians, and ratios of pairs run
one after the other). `--no-spectrum` fits the log-mel views alone (`spectrum_poolings=()`). Prints one
line of figures per repeat.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "source"))

import asd  # noqa: E402
from asd.cache.reading import segment_rows_of  # noqa: E402
from asd.cache.shard import Shard  # noqa: E402
from asd.models.pooling import pooled_features  # noqa: E402
from asd.models.short_spectrum import pooled_spectra  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processed", required=True, help="a processed dataset folder (its machine types inside)")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--no-spectrum", action="store_true", help="the log-mel views alone")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    options = {"spectrum_poolings": ()} if args.no_spectrum else {}
    machine = asd.open_cache(args.processed).machine(args.machine)
    for _ in range(args.repeat):
        start = time.perf_counter()
        detector = asd.fit(machine, model="gmm", model_options=options, seed=0)
        fitted = time.perf_counter()
        predictions = asd.score(detector, machine)
        scored = time.perf_counter()
        shard = Shard(machine.train)
        clips = shard.clips.index.to_numpy()
        mel_start = time.perf_counter()
        pooled_features(shard, segment_rows_of(shard, clips), detector.poolings_)
        mel_seconds = time.perf_counter() - mel_start
        spectrum_start = time.perf_counter()
        if detector.spectrum_poolings_:
            pooled_spectra(shard, clips, detector.spectrum_n_fft_, detector.spectrum_poolings_)
        spectrum_seconds = time.perf_counter() - spectrum_start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{machine.key}: {len(clips)} training clips, views {', '.join(detector.view_names())}; "
              f"fit {fitted - start:.1f} s, score {len(predictions) / (scored - fitted):.0f} clips/s "
              f"({len(predictions)} clips, {scored - fitted:.1f} s); features of the training clips: log-mel "
              f"{mel_seconds:.1f} s, spectrum {spectrum_seconds:.1f} s; peak {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
