"""`python source/main.py [run|train|test|summarize|score]`: the pipeline stages on the command line."""

from __future__ import annotations

import functools
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click
import pandas as pd

from asd.detector import REDUCERS, TrainConfig
from asd.models.registry import MODELS

DEFAULT_MODEL = "ae-maha"  # best official score in bench/bench_quality.py (README, Quality)
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def training_options(func):
    """Options shared by `run` and `train`."""
    options = [
        click.option("--processed-dir", default="data/processed", type=click.Path(path_type=Path),
                     help="Shards written by data_prep."),
        click.option("--output-dir", default=None, type=click.Path(path_type=Path),
                     help="Run folder (default: a new output/<time>_<model>/)."),
        click.option("--model", type=click.Choice(sorted(MODELS)), default=DEFAULT_MODEL),
        click.option("--machines", default="", help="Comma-separated machine types (default: all)."),
        click.option("--epochs", default=None, type=int, help="Training epochs (default: the model's)."),
        click.option("--seed", default=0, type=int),
        click.option("--device", default="auto", help="auto | cpu | cuda"),
        click.option("--val-fraction", default=0.1, type=float,
                     help="Share of normal training clips held out (by clip) to fit thresholds."),
        click.option("--aggregate", type=click.Choice(REDUCERS), default="mean",
                     help="How segment scores become a clip score."),
        click.option("--threshold-percentile", default=90.0, type=float),
        click.option("--threshold-method", type=click.Choice(["gamma", "percentile"]), default="gamma"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _fail_cleanly(func):
    """Turn expected user errors into one clear line and exit code 2, instead of a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from asd.detector import FingerprintMismatch
        from asd.shard import StaleShard

        try:
            return func(*args, **kwargs)
        except (FileNotFoundError, FingerprintMismatch, StaleShard, KeyError, RuntimeError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
    return wrapper


def _new_run_dir(model: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("output") / f"{stamp}_{model}"
    suffix = 1
    while path.exists():  # runs never overwrite each other
        path = Path("output") / f"{stamp}_{model}-{suffix}"
        suffix += 1
    return path


def _train(processed_dir, output_dir, model, machines, epochs, seed, device, val_fraction, aggregate,
           threshold_percentile, threshold_method) -> tuple[Path, TrainConfig]:
    from asd.pipeline import discover, train_config_record, train_machine, write_config

    train = TrainConfig(epochs=epochs, seed=seed, device=device, val_fraction=val_fraction,
                        aggregate=aggregate, threshold_method=threshold_method,
                        threshold_percentile=threshold_percentile)
    items = discover(processed_dir, [m for m in machines.split(",") if m] or None)
    if not items:
        raise FileNotFoundError(f"no shards under {processed_dir}; run `python source/data_prep.py` first")
    run_dir = output_dir or _new_run_dir(model)
    write_config(run_dir, train_config_record(train, model, processed_dir))
    click.echo(f"training {model} on {len(items)} machine type(s) -> {run_dir}")
    rows = []
    for item in items:
        start = time.perf_counter()
        machine_rows = train_machine(item, run_dir, model, train)
        rows += machine_rows
        pooled = machine_rows[-1]
        click.echo(f"  {item.key:<40} {time.perf_counter() - start:6.1f} s   threshold {pooled['threshold']:.4g}"
                   f"  false alarms on held-out normals {pooled['false_alarm_rate']:.1%} (cross-fitted)")
    pd.DataFrame(rows).to_csv(run_dir / "thresholds.csv", index=False)
    return run_dir, train


def _test(run_dir: Path, machines: str = "", device: str | None = None) -> None:
    from asd.detector import TrainConfig
    from asd.pipeline import discover, test_machine, write_machine_outputs
    from asd.report import report_run

    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); make one with "
                                "`python source/main.py train`")
    config = json.loads((run_dir / "config.json").read_text())
    train = TrainConfig(**{**config["train"], **({"device": device} if device else {})})
    items = [i for i in discover(Path(config["processed_dir"]), [m for m in machines.split(",") if m] or None)
             if i.tests and (run_dir / i.dataset / i.machine / "model.pt").exists()]
    if not items:
        raise FileNotFoundError(f"nothing to test in {run_dir}: no trained machine type has test shards")
    click.echo(f"testing {len(items)} machine type(s) from {run_dir}")
    all_predictions = []
    for item in items:
        predictions, rules = test_machine(item, run_dir, train)
        write_machine_outputs(item, run_dir, predictions, rules)
        all_predictions.append(predictions.assign(rules=rules))
    click.echo(report_run(run_dir, pd.concat(all_predictions, ignore_index=True)))
    from asd.run_report import write_run_report
    click.echo(f"report: {write_run_report(run_dir)}  (open it in a browser)")


@click.command("run", context_settings=CONTEXT)
@training_options
@_fail_cleanly
def run_command(**options) -> None:
    """Train, then test, every machine type found (the default when no subcommand is given)."""
    run_dir, train = _train(**options)
    _test(run_dir, options["machines"])


@click.command("train", context_settings=CONTEXT)
@training_options
@_fail_cleanly
def train_command(**options) -> None:
    """Train a detector per machine type on its train.h5 shard; save models and thresholds."""
    run_dir, _ = _train(**options)
    click.echo(f"next: python source/main.py test --run {run_dir}")


@click.command("test", context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--machines", default="")
@click.option("--device", default=None, help="Override the device used for training.")
@_fail_cleanly
def test_command(run_dir: Path, machines: str, device: str | None) -> None:
    """Score the test shards with a run's models; write official files, metrics and plots."""
    _test(run_dir, machines, device)


@click.command("summarize", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison as a page here [default: <common parent of RUNS>/compare.html].")
@_fail_cleanly
def summarize_command(runs: tuple[Path, ...], html_path: Path | None) -> None:
    """One table over machine types; several runs side by side."""
    from asd.report import compare_runs

    click.echo(compare_runs(list(runs)))
    from asd.run_report import default_comparison_path, write_comparison_page
    click.echo(f"page: {write_comparison_page(list(runs), html_path or default_comparison_path(list(runs)))}")


@click.command("score", context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--machine", required=True, help="Machine type whose model scores the files.")
@click.option("--dataset", default=None, help="Dataset of that machine type, if several have it.")
@click.option("--out", "out_csv", default=None, type=click.Path(path_type=Path),
              help="CSV to write (default: <run>/scores_<machine>_<time>.csv).")
@click.option("--aggregate", type=click.Choice(REDUCERS), default=None)
@click.option("--device", default="auto")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_fail_cleanly
def score_command(run_dir, machine, dataset, out_csv, aggregate, device, paths) -> None:
    """Score any wav files or folders with a trained model: file, score, threshold, decision."""
    from asd.score_files import score_paths

    table, skipped = score_paths(run_dir, machine, list(paths), dataset=dataset, aggregate=aggregate,
                                 device=device)
    out_csv = out_csv or run_dir / f"scores_{machine}_{datetime.now():%Y%m%d-%H%M%S}.csv"
    table.to_csv(out_csv, index=False)
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        click.echo(table.to_string(index=False))
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    flagged = int(table["decision"].sum())
    click.echo(f"{len(table)} files scored, {flagged} flagged anomalous -> {out_csv}")
