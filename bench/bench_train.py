"""Benchmark: the default model's whole `run` command (train + test wall time, peak memory, quality) and
the autoencoders' train + test time, epochs chosen by early stopping, peak memory and quality, next to
fixed-epoch training (the DCASE baseline's 100 epochs), all measured in the same run.

    python bench/bench_train.py [--machine fan] [--scale 1.0] [--synth-seeds 1] [--real-seeds 3]
                                [--real ../shared/real] [--fixed-epochs 100] [--synth-fixed-epochs N]
                                [--threads 1] [--keep DIR]

Datasets: one synthetic machine type at DCASE size (--scale 1.0: 1000 training clips, 200 test clips of
10 s) and, when the folder exists, the real valve set `../shared/real/dcase2023t2-valve-mini`
(34 training clips, 166 test clips). For every dataset and seed the AE is trained twice, with early
stopping (the default: no --epochs) and with exactly --fixed-epochs, through the functions that
`python source/main.py` uses. `ae` is scored by MSE; `ae-maha` by selective Mahalanobis, trained in its
own stage (each model calibrates its own scores on its networks' held-out folds, so one network cannot
serve both; the epochs shown are the first fold network's). Every stage runs in its own process, so
"peak MiB" is that stage's own peak resident memory (Python, torch and the data). The default model
(`auto`: `gmm` alone on the real valve set, `gmm` + `embed` on the 1000-clip synthetic type) is timed as a
user runs it: `python source/main.py run --machines M` in its own process, start-up, plots and report
included. Ratios come from this one run; compare absolute seconds across machines only
as ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "source"
sys.path.insert(0, str(SOURCE))
REAL_NAME = "dcase2023t2-valve-mini"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- one stage in its own process ---------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Run one stage and print one JSON line: seconds, peak memory and what the stage measured."""
    from asd.cache.store import discover
    from asd.run_folder import RunFolder

    (item,) = discover(Path(args.processed), [args.machine])
    run_dir = Path(args.run)
    config = _run_config(args.epochs, args.seed, args.threads)
    result: dict = {}
    start = time.perf_counter()
    if args.worker in ("train", "maha"):
        from dataclasses import replace

        from asd.engine.train import train_machine
        from asd.models.checkpoint import load_detector

        model = "ae" if args.worker == "train" else "ae-maha"
        folder = RunFolder(run_dir / model)
        train_machine(item, replace(config, model=model), folder)
        result.update(load_detector(folder.model_path(item.dataset, item.machine)).stopping_[0])
    else:  # test-ae / test-ae-maha
        from asd.engine.test import score_machine
        from asd.evaluation.metrics import dataset_score, metrics_table

        predictions, rules = score_machine(item, config, RunFolder(run_dir / args.worker.removeprefix("test-")))
        row = metrics_table(predictions, rules).iloc[0]
        result.update({"official": float(dataset_score(predictions, rules)["official score"]),
                       "auc_source": float(row["AUC (source)"]), "auc_target": float(row["AUC (target)"]),
                       "pauc": float(row["pAUC"]), "clips": len(predictions)})
    result.update({"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()})
    print("BENCH " + json.dumps(result), flush=True)


def _run_config(epochs: int | None, seed: int, threads: int):
    from asd.engine.config import RunConfig
    from asd.models.base import FitConfig

    return RunConfig(model="ae", fit=FitConfig(epochs=epochs, seed=seed, device="cpu", threads=threads))


def run_stage(stage: str, processed: Path, machine: str, run_dir: Path, seed: int, epochs: int | None,
              threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", stage, "--processed", str(processed), "--machine", machine,
               "--run", str(run_dir), "--seed", str(seed), "--threads", str(threads)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"stage {stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("BENCH "))


def run_command_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of a command, from a wrapper process whose only child it is
    (so that the figure is the command's own, not this benchmark's other children)."""
    wrapper = ("import json, resource, subprocess, sys, time; start = time.perf_counter(); "
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(done.stderr[-3000:], file=sys.stderr); "
               "print(json.dumps([done.returncode, time.perf_counter() - start, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    returncode, seconds, peak = json.loads(done.stdout.strip().splitlines()[-1])
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, peak


def measure_default(dataset: str, processed: Path, machine: str, seed: int, threads: int, work: Path) -> dict:
    """The default model's `run` command on one machine type: wall time, peak memory and its scores."""
    import pandas as pd

    from asd.models.registry import DEFAULT_MODEL

    run_dir = work / f"run-{dataset}-default-seed{seed}".replace(" ", "_")
    seconds, peak = run_command_measured(
        [sys.executable, str(SOURCE / "main.py"), "run", "--processed-dir", str(processed), "--machines", machine,
         "--model", DEFAULT_MODEL, "--seed", str(seed), "--threads", str(threads), "--output-dir", str(run_dir)])
    (summary,) = run_dir.glob("*/summary.csv")
    metrics = pd.read_csv(summary).iloc[0]
    official = pd.read_csv(summary.parent / "official_score.csv").set_index("metric")["value"]
    return {"dataset": dataset, "seed": seed, "schedule": "its own", "model": f"{DEFAULT_MODEL} (default)",
            "epochs run": "-", "epoch kept": "-", "train s": float("nan"), "test s": float("nan"),
            "train+test s": seconds, "peak MiB train": peak, "peak MiB test": peak,
            "AUC (source)": float(metrics["AUC (source)"]), "AUC (target)": float(metrics["AUC (target)"]),
            "pAUC": float(metrics["pAUC"]), "official": float(official["official score"])}


# --- the comparison ----------------------------------------------------------------------------------------
def measure(dataset: str, processed: Path, machine: str, seeds: int, fixed_epochs: int, threads: int,
            work: Path) -> list[dict]:
    rows = []
    for seed in range(seeds):
        rows.append(measure_default(dataset, processed, machine, seed, threads, work))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
        for schedule, epochs in (("early", None), (f"fixed-{fixed_epochs}", fixed_epochs)):
            run_dir = work / f"run-{dataset}-{schedule}-seed{seed}"
            trained = run_stage("train", processed, machine, run_dir, seed, epochs, threads)
            maha = run_stage("maha", processed, machine, run_dir, seed, epochs, threads)
            for model, fitted in (("ae", trained), ("ae-maha", maha)):
                tested = run_stage(f"test-{model}", processed, machine, run_dir, seed, epochs, threads)
                rows.append({
                    "dataset": dataset, "seed": seed, "schedule": schedule, "model": model,
                    "epochs run": fitted["epochs_run"], "epoch kept": fitted["chosen_epoch"],
                    "train s": fitted["seconds"], "test s": tested["seconds"],
                    "train+test s": fitted["seconds"] + tested["seconds"],
                    "peak MiB train": fitted["peak_mib"],
                    "peak MiB test": tested["peak_mib"], "AUC (source)": tested["auc_source"],
                    "AUC (target)": tested["auc_target"], "pAUC": tested["pauc"], "official": tested["official"],
                })
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                      flush=True)
    return rows


def summarise(rows: list[dict]):
    """Per dataset and model: the model as it runs by default (the autoencoders: early stopping) next to
    fixed epochs (mean ± sd over seeds), with the ratios; the default model against the fixed `ae-maha`."""
    import pandas as pd

    table = pd.DataFrame(rows)
    out = []
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        if (part["schedule"] == "its own").all():
            out.append(_default_record(dataset, model, part, table[table["dataset"] == dataset]))
            continue
        early = part[part["schedule"] == "early"]
        fixed = part[part["schedule"] != "early"]
        record = {"dataset": dataset, "model": model, "seeds": len(early), "reference": fixed["schedule"].iloc[0]}
        for name, group in (("early", early), ("fixed", fixed)):
            score = group["official"]
            suffix = "" if name == "early" else " fixed"
            record[f"official{suffix}"] = f"{score.mean():.3f} ± {score.std(ddof=1) if len(score) > 1 else 0:.3f}"
            record[f"train+test s{suffix}"] = round(group["train+test s"].mean(), 1)
        record["epochs run/kept"] = " ".join(f"{r}/{k}" for r, k in zip(early["epochs run"], early["epoch kept"],
                                                                       strict=True))
        record["time / fixed"] = round(early["train+test s"].mean() / fixed["train+test s"].mean(), 3)
        record["official - fixed"] = round(early["official"].mean() - fixed["official"].mean(), 4)
        record["peak MiB train/test"] = (f"{part['peak MiB train'].max():.0f}/{part['peak MiB test'].max():.0f}")
        out.append(record)
    return pd.DataFrame(out)


def _default_record(dataset: str, model: str, part, same_dataset) -> dict:
    """The default model's line: its own figures, and ratios against the fixed-epoch autoencoders."""
    score = part["official"]
    record = {"dataset": dataset, "model": model, "seeds": len(part), "reference": "ae-maha fixed",
              "official": f"{score.mean():.3f} ± {score.std(ddof=1) if len(part) > 1 else 0:.3f}",
              "train+test s": round(part["train+test s"].mean(), 1), "epochs run/kept": "its own",
              "peak MiB train/test": f"{part['peak MiB train'].max():.0f} (whole command)"}
    fixed = same_dataset[(same_dataset["model"] == "ae-maha") & ~same_dataset["schedule"].isin(["early", "its own"])]
    if len(fixed):
        record["official fixed"] = f"{fixed['official'].mean():.3f}"
        record["train+test s fixed"] = round(fixed["train+test s"].mean(), 1)
        record["time / fixed"] = round(part["train+test s"].mean() / fixed["train+test s"].mean(), 3)
        record["official - fixed"] = round(score.mean() - fixed["official"].mean(), 4)
    return record


def prepare(raw: Path, processed: Path, jobs: int) -> None:
    from asd.cache.build import PrepConfig, run_prep

    summary = run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(processed), jobs=jobs), show_progress=False)
    print(f"data_prep {raw}: {summary.seconds:.1f} s ({summary.clips} clips prepared, "
          f"{len(summary.shards_skipped)} shards reused)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", default="fan")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--synth-seeds", type=int, default=1)
    parser.add_argument("--real-seeds", type=int, default=3)
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "real")
    parser.add_argument("--fixed-epochs", type=int, default=100)
    parser.add_argument("--synth-fixed-epochs", type=int, default=None, help="default: --fixed-epochs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process, as `--threads` of the command line (0: every core)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Work here (data reused if present).")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--processed", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="asd-bench-train-"))
    rows = []
    real = args.real / REAL_NAME
    if args.real_seeds > 0 and real.is_dir():
        prepare(args.real, work / "processed-real", args.jobs)
        processed = work / "processed-real" / REAL_NAME
        rows += measure("real valve", processed, "valve", args.real_seeds, args.fixed_epochs, args.threads, work)
    elif args.real_seeds > 0:
        print(f"real set absent ({real}): skipped", flush=True)
    if args.synth_seeds > 0:
        from asd.dataset.synth import generate_dataset

        raw = work / "raw"
        if not (raw / "synth" / args.machine).is_dir():
            start = time.perf_counter()
            generate_dataset(raw / "synth", seed=0, scale=args.scale, machines=[args.machine], n_jobs=args.jobs)
            print(f"synth: {time.perf_counter() - start:.1f} s", flush=True)
        prepare(raw, work / "processed", args.jobs)
        rows += measure(f"synth {args.machine} x{args.scale:g}", work / "processed" / "synth", args.machine,
                        args.synth_seeds, args.synth_fixed_epochs or args.fixed_epochs, args.threads, work)
    if rows:
        print("\n" + summarise(rows).to_string(index=False))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
