"""Quality benchmark: the simple AE, the selective-Mahalanobis AE and the embedding model side by side.

    python bench/bench_quality.py [--scale 1.0] [--ae-epochs 100] [--embed-epochs 8] [--keep DIR]

On the full-scale synthetic dataset (four machine types, 990 + 10 training and 200 test clips each) it
trains every model with the same seed through the functions `python source/main.py` uses, and prints per
machine type AUC (source), AUC (target), pAUC, the official score (DCASE 2022+ rules) and the training
and scoring times. The AE is trained once and scored both ways (MSE and selective Mahalanobis): the two
modes share the network, as in the DCASE baseline; each mode gets its own thresholds, and the "train s"
of ae-maha is only its own extra cost (Mahalanobis statistics and thresholds).
A markdown copy of the table is written to <work>/quality.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "source"))

from asd.data import split_train_validation  # noqa: E402
from asd.detector import TrainConfig, load_detector  # noqa: E402
from asd.metrics import dataset_score, metrics_table  # noqa: E402
from asd.pipeline import discover, fit_thresholds, machine_dir, test_machine, train_machine  # noqa: E402
from asd.prep import PrepConfig, run_prep  # noqa: E402
from asd.shard import Shard  # noqa: E402
from asd.synth import MACHINE_TYPES, generate_dataset  # noqa: E402


def mahalanobis_variant(item, ae_run: Path, maha_run: Path, train: TrainConfig) -> float:
    """Score the trained AE by selective Mahalanobis: refit its thresholds on the same held-out clips."""
    start = time.perf_counter()
    detector = load_detector(machine_dir(ae_run, item) / "model.pt").with_score("mahalanobis")
    shard = Shard(item.train)
    normal = shard.clips[shard.clips["label"] != "anomaly"]
    train_clips, val_clips = split_train_validation(normal, train.val_fraction, train.seed)
    fit_thresholds(detector, shard, val_clips, train_clips, train)
    detector.save(machine_dir(maha_run, item) / "model.pt")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--machines", default=",".join(MACHINE_TYPES))
    parser.add_argument("--ae-epochs", type=int, default=100)
    parser.add_argument("--embed-epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Work here (data reused if present).")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="asd-bench-quality-"))
    machines = [m for m in args.machines.split(",") if m]
    raw, processed = work / "raw", work / "processed"
    if not (raw / "synth").is_dir():
        start = time.perf_counter()
        generate_dataset(raw / "synth", seed=args.seed, scale=args.scale, machines=machines, n_jobs=args.jobs)
        print(f"synth: {time.perf_counter() - start:.1f} s", flush=True)
    summary = run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(processed), jobs=args.jobs), show_progress=False)
    print(f"data_prep: {summary.seconds:.1f} s", flush=True)

    rows, predictions = [], {}
    runs = {"ae": work / "run_ae", "ae-maha": work / "run_ae-maha", "embed": work / "run_embed"}
    for item in discover(processed / "synth", machines):
        for model in runs:
            epochs = {"ae": args.ae_epochs, "ae-maha": args.ae_epochs, "embed": args.embed_epochs}[model]
            train = TrainConfig(epochs=epochs, seed=args.seed)
            start = time.perf_counter()
            if model == "ae-maha":  # its own cost only: it reuses the network trained for "ae"
                train_seconds = mahalanobis_variant(item, runs["ae"], runs[model], train)
            else:
                train_machine(item, runs[model], model, train)
                train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            pred, rules = test_machine(item, runs[model], train)
            score_seconds = time.perf_counter() - start
            predictions.setdefault(model, []).append(pred)
            metrics = metrics_table(pred, rules).iloc[0]
            rows.append({"machine": item.machine, "model": model, "AUC (source)": metrics["AUC (source)"],
                         "AUC (target)": metrics["AUC (target)"], "pAUC": metrics["pAUC"],
                         "official": dataset_score(pred, rules)["official score"],
                         "train s": train_seconds, "test clips/s": len(pred) / score_seconds})
            print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 1,
                                                     float_format="{:.4f}".format), flush=True)
    for model, preds in predictions.items():
        score = dataset_score(pd.concat(preds), "dcase2022")["official score"]
        rows.append({"machine": "ALL", "model": model, "official": score,
                     "train s": sum(r["train s"] for r in rows if r["model"] == model)})
    table = pd.DataFrame(rows)
    text = table.to_string(index=False, float_format="{:.4f}".format, na_rep="")
    print("\n" + text)
    markdown = table.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else text
    (work / "quality.md").write_text(markdown + "\n")
    print(f"\nwork folder: {work}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
