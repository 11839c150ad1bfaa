"""Quality benchmark: every detector on the real recordings (several seeds) and on the synthetic set.

    python bench/bench_quality.py [--real ../shared/real] [--seeds 0,1,2]
                                  [--models gmm,ae,ae-maha,embed,twobranch,ensemble]
                                  [--synthetic-scale 1.0] [--synthetic-seeds 0] [--no-synthetic]
                                  [--ae-epochs 100] [--embed-epochs 8] [--keep DIR]
                                  [--variant NAME=MODEL:field=value,field=value ...]

Real recordings decide (README, Quality): every machine type found under --real (default ../shared/real
beside the project, skipped when absent) is prepared with data_prep, then every model is trained and tested
once per seed through the same functions `python source/main.py` uses; the table gives mean ± sd over
seeds of AUC (source), AUC (target), pAUC and the official score (the rules of each set), the share of
normal test clips flagged at the threshold in each domain (the thresholds aim for 10 %), training seconds
and test clips per second, then one summary row per model over all the real sets. The synthetic set (four
machine types at DCASE size unless --synthetic-scale) follows with one row per machine type and model.
Markdown copies land in <work>/quality_*.md.

A variant is a model with config fields changed, named for --models: e.g.
`--variant embed-1s=embed:crop_frames=32,score_frames=32 --models embed,embed-1s`, or
`--variant gmm+tb=ensemble:members=["gmm","twobranch"]` (values are read as JSON, else as text).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "source"))

from asd.cache.build import PrepConfig, run_prep  # noqa: E402
from asd.cache.store import discover  # noqa: E402
from asd.dataset.synth import MACHINE_TYPES, generate_dataset  # noqa: E402
from asd.engine.config import RunConfig  # noqa: E402
from asd.engine.test import score_machine  # noqa: E402
from asd.engine.train import fit_shared, shared_groups, train_machine  # noqa: E402
from asd.evaluation.metrics import dataset_score, metrics_table  # noqa: E402
from asd.models.base import FitConfig  # noqa: E402
from asd.models.registry import DEFAULT_THREADS  # noqa: E402
from asd.run_folder import RunFolder  # noqa: E402

METRICS = ("AUC (source)", "AUC (target)", "pAUC", "official")


def parse_variants(specs: list[str]) -> dict[str, tuple[str, dict]]:
    """``NAME=MODEL:field=value,...`` -> {NAME: (MODEL, overrides)}; every plain model maps to itself."""
    variants = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        model, _, fields = rest.partition(":")
        overrides = {}
        for pair in filter(None, re.split(r",(?=\w+=)", fields)):  # a comma inside a value (a list) stays
            key, _, text = pair.partition("=")
            try:
                overrides[key] = json.loads(text)
            except json.JSONDecodeError:
                overrides[key] = text
        variants[name] = (model, overrides)
    return variants


def evaluate_model(item, folder: RunFolder, config: RunConfig, shared: dict, shared_seconds: float,
                   name: str | None = None) -> tuple[dict, pd.DataFrame]:
    """Train and test one machine type with one model and seed: its metrics and timings (a share of the
    training across machine types, if the model has one), its predictions."""
    start = time.perf_counter()
    train_machine(item, config, folder, shared=shared.get(item.dataset))
    train_seconds = time.perf_counter() - start + shared_seconds
    start = time.perf_counter()
    predictions, rules = score_machine(item, config, folder)
    test_seconds = time.perf_counter() - start
    metrics = metrics_table(predictions, rules)
    normal = predictions[predictions["label"] == "normal"]
    flagged = {domain: normal.loc[normal["domain"] == domain, "decision"].mean() for domain in ("source", "target")}
    return {"dataset": item.dataset, "machine": item.machine, "model": name or config.model,
            "seed": config.fit.seed,
            # DCASE 2020 rules (the MIMII set) have one AUC per machine ID and no domains
            "AUC (source)": metrics.get("AUC (source)", metrics.get("AUC")).mean(),
            "AUC (target)": metrics["AUC (target)"].mean() if "AUC (target)" in metrics else float("nan"),
            "pAUC": metrics["pAUC"].mean(), "official": dataset_score(predictions, rules)["official score"],
            # the share of normal test clips above the threshold (which aims for 10 %), per domain
            "flagged source": flagged["source"], "flagged target": flagged["target"],
            "train s": train_seconds, "test clips/s": len(predictions) / test_seconds}, predictions


def epochs_for(model: str, args: argparse.Namespace) -> int | None:
    return {"ae": args.ae_epochs, "ae-maha": args.ae_epochs, "embed": args.embed_epochs}.get(model)


def run_set(processed: Path, models: list[str], seeds: list[int], work: Path, args, label: str
            ) -> tuple[pd.DataFrame, dict[tuple[str, int], list[pd.DataFrame]]]:
    """Every machine type x model x seed; the metric rows and the predictions per (model, seed)."""
    rows, predictions = [], {}
    items = [item for item in discover(processed) if item.tests and item.train is not None]
    for name in models:
        model, overrides = args.variants.get(name, (name, {}))
        for seed in seeds:
            fit = FitConfig(epochs=epochs_for(model, args), seed=seed, device="cpu", threads=args.threads)
            config = RunConfig(model=model, model_options=overrides, processed_dir=str(processed), fit=fit)
            folder = RunFolder(work / f"run_{label}_{name}_{seed}")
            start = time.perf_counter()
            shared = {dataset: fit_shared(dataset, group, config, folder)  # embed: one network for all types
                      for dataset, group in shared_groups(items, config).items()}
            shared_seconds = (time.perf_counter() - start) / len(items)
            for item in items:
                row, machine_predictions = evaluate_model(item, folder, config, shared, shared_seconds, name)
                rows.append(row)
                predictions.setdefault((name, seed), []).append(machine_predictions)
                print(f"  {label:<9} {item.machine:<10} {name:<9} seed {seed}: official {row['official']:.4f}  "
                      f"train {row['train s']:.1f} s  test {row['test clips/s']:.0f} clips/s", flush=True)
    return pd.DataFrame(rows), predictions


def mean_sd_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per dataset, machine type and model: mean ± sd over seeds."""
    out = []
    for (dataset, machine, model), group in rows.groupby(["dataset", "machine", "model"], sort=False):
        line = {"dataset": dataset, "machine": machine, "model": model, "seeds": len(group)}
        for name in METRICS:
            values = group[name].to_numpy(dtype=float)
            line[name] = f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"
        for name in ("flagged source", "flagged target"):
            line[name] = f"{group[name].mean():.0%}" if group[name].notna().any() else "-"
        line["train s"] = f"{group['train s'].mean():.1f}"
        line["test clips/s"] = f"{group['test clips/s'].mean():.0f}"
        out.append(line)
    return pd.DataFrame(out)


def mean_over_sets(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per model: the official score averaged over every real set, per seed, then mean ± sd over
    seeds (one small set can mislead; the mean over sets decides), with the flagged shares."""
    out = []
    for model, group in rows.groupby("model", sort=False):
        per_seed = group.groupby("seed")["official"].mean().to_numpy()
        out.append({"model": model, "sets": group[["dataset", "machine"]].drop_duplicates().shape[0],
                    "seeds": len(per_seed),
                    "official (mean over sets)": f"{per_seed.mean():.3f} ± "
                                                 f"{per_seed.std(ddof=1) if len(per_seed) > 1 else 0:.3f}",
                    "flagged source": f"{group['flagged source'].mean():.0%}",
                    "flagged target": f"{group['flagged target'].mean():.0%}"
                    if group["flagged target"].notna().any() else "-",
                    "train s (mean)": f"{group['train s'].mean():.1f}"})
    return pd.DataFrame(out)


def synthetic_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per machine type and model, plus the official score over all machine types (per seed, averaged)."""
    columns = [*METRICS, "flagged source", "flagged target", "train s", "test clips/s"]
    table = rows.groupby(["machine", "model"], sort=False)[columns].mean()
    table = table.reset_index()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_real = ROOT.parent / "shared" / "real"
    parser.add_argument("--real", type=Path, default=default_real if default_real.is_dir() else None)
    parser.add_argument("--seeds", default="0,1,2", help="Seeds for the real set.")
    parser.add_argument("--models", default="gmm,ae,ae-maha,embed,twobranch,ensemble")
    parser.add_argument("--synthetic-scale", type=float, default=1.0)
    parser.add_argument("--synthetic-seeds", default="0")
    parser.add_argument("--synthetic-machines", default=",".join(MACHINE_TYPES))
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--ae-epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument("--embed-epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch threads per process, as `--threads` of the command line (0 = every core)")
    parser.add_argument("--keep", type=Path, default=None, help="Work here (data reused if present).")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=MODEL:field=value,... : a model with config fields changed, usable in --models")
    args = parser.parse_args()
    args.variants = parse_variants(args.variant)

    work = args.keep or Path(tempfile.mkdtemp(prefix="asd-bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    parse = lambda text: [int(s) for s in text.split(",") if s]  # noqa: E731
    if args.real is not None and Path(args.real).is_dir():
        processed = work / "processed-real"
        run_prep(PrepConfig(raw_dir=str(args.real), out_dir=str(processed), jobs=args.jobs), show_progress=False)
        rows, _ = run_set(processed, models, parse(args.seeds), work, args, "real")
        rows.to_csv(work / "quality_real_runs.csv", index=False)
        table, overall = mean_sd_table(rows), mean_over_sets(rows)
        print(f"\nreal recordings ({args.real}), mean ± sd over seeds {args.seeds}:\n"
              + table.to_string(index=False) + "\n\nmean over the real sets:\n" + overall.to_string(index=False))
        (work / "quality_real.md").write_text(_markdown(table) + "\n" + _markdown(overall))
    else:
        print("no real recordings (--real not given and ../shared/real absent): real table skipped")
    if not args.no_synthetic:
        raw, processed = work / "raw", work / "processed"
        machines = [m for m in args.synthetic_machines.split(",") if m]
        if not (raw / "synth").is_dir():
            generate_dataset(raw / "synth", seed=0, scale=args.synthetic_scale, machines=machines,
                             n_jobs=args.jobs)
        run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(processed), jobs=args.jobs), show_progress=False)
        rows, predictions = run_set(processed / "synth", models, parse(args.synthetic_seeds), work, args,
                                    "synthetic")
        rows.to_csv(work / "quality_synthetic_runs.csv", index=False)
        table = synthetic_table(rows)
        overall = _overall_synthetic(predictions, models, parse(args.synthetic_seeds))
        print("\nsynthetic set:\n" + table.to_string(index=False, float_format="{:.4f}".format)
              + "\n\nofficial score over all synthetic machine types:\n" + overall.to_string(index=False))
        (work / "quality_synthetic.md").write_text(_markdown(table) + "\n" + _markdown(overall))
    print(f"\nwork folder: {work}")


def _overall_synthetic(predictions: dict, models: list[str], seeds: list[int]) -> pd.DataFrame:
    """The official score of each model over every synthetic machine type (mean over seeds)."""
    lines = []
    for model in models:
        scores = [dataset_score(pd.concat(predictions[(model, seed)]), "dcase2022")["official score"]
                  for seed in seeds]
        lines.append({"model": model, "official (all machine types)": f"{np.mean(scores):.4f}"})
    return pd.DataFrame(lines)


def _markdown(table: pd.DataFrame) -> str:
    try:
        return table.to_markdown(index=False, floatfmt=".4f") + "\n"
    except ImportError:  # tabulate is optional
        return table.to_string(index=False) + "\n"


if __name__ == "__main__":
    main()
