"""`python source/main.py [run|train|test|summarize|score]`: the pipeline stages on the command line.

Only the project's own errors (asd.errors.AsdError) become a one-line message with exit status 2; any
other exception is a bug and keeps its traceback. A stage that finishes with some machine types failed
exits 1 after saying which. Nothing heavy is imported at module level, so `--help` stays fast.
"""

from __future__ import annotations

import functools
import sys
from datetime import datetime
from pathlib import Path

import click

from asd.cli.config_file import config_option
from asd.cli.options import (
    COMMA_LIST,
    CONTEXT,
    DEVICE,
    EPOCHS,
    MODEL_NAMES,
    PERCENTILE,
    REDUCERS,
    SEED,
    THRESHOLD_METHODS,
    VAL_FRACTION,
    check_out_file,
)
from asd.errors import AsdError

DEFAULT_MODEL = "gmm"  # best on the real recordings in bench/bench_quality.py (README, Quality)


def training_options(func):
    """Options shared by `run` and `train` (and `python source/main.py` with no subcommand)."""
    options = [
        click.option("--processed-dir", default="data/processed", type=click.Path(path_type=Path),
                     help="Shards written by data_prep."),
        click.option("--output-dir", default=None, type=click.Path(path_type=Path),
                     help="Run folder (default: a new output/<time>_<model>/)."),
        click.option("--model", type=click.Choice(MODEL_NAMES), default=DEFAULT_MODEL),
        click.option("--machines", type=COMMA_LIST, default="", show_default=False,
                     help="Comma-separated machine types (default: all)."),
        click.option("--members", type=COMMA_LIST, default="", show_default=False,
                     help="With --model ensemble: its member models, comma-separated (default: gmm,ae-maha)."),
        click.option("--model-option", "model_option", multiple=True, metavar="FIELD=VALUE",
                     help="Set a field of the model's config (repeatable), e.g. --model-option n_networks=3 "
                          "with --model embed; the fields are listed when one is wrong."),
        click.option("--epochs", default=None, type=EPOCHS,
                     help="Train exactly this many epochs, >= 1 (default: stop early, see --max-epochs)."),
        click.option("--max-epochs", default=None, type=EPOCHS,
                     help="Most epochs when stopping early (default: the model's, 100 for the autoencoders)."),
        click.option("--patience", default=5, type=click.IntRange(min=1),
                     help="Stop early after this many epochs without improvement of the held-out loss."),
        click.option("--min-delta", default=0.005, type=click.FloatRange(min=0, max=1, max_open=True),
                     help="Relative improvement of the held-out loss that counts, in [0, 1)."),
        click.option("--seed", default=0, type=SEED, help="Random seed, >= 0 (same seed, same scores)."),
        click.option("--device", default="auto", type=DEVICE, help="auto | cpu | cuda | cuda:N"),
        click.option("--threads", default=0, type=click.IntRange(min=0),
                     help="torch threads for training (0 = every core; 1 is faster on a machine busy with "
                          "other work)."),
        click.option("--val-fraction", default=0.1, type=VAL_FRACTION,
                     help="Share of normal training clips held out (by clip) to fit thresholds, in [0, 1)."),
        click.option("--aggregate", type=click.Choice(REDUCERS), default="mean",
                     help="How segment scores become a clip score."),
        click.option("--threshold-percentile", default=90.0, type=PERCENTILE,
                     help="Percentile of held-out normal scores the threshold sits at, in (0, 100)."),
        click.option("--threshold-method", type=click.Choice(THRESHOLD_METHODS), default="gamma"),
    ]
    for option in reversed(options):
        func = option(func)
    return config_option(func)


def fail_cleanly(func):
    """The project's own errors (AsdError) become one line on stderr and exit status 2; others propagate."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AsdError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
    return wrapper


_fail_cleanly = fail_cleanly  # the older name


@click.command("run", context_settings=CONTEXT)
@training_options
@fail_cleanly
def run_command(**options) -> None:
    """Train, then test, every machine type found (the default when no subcommand is given)."""
    from asd.engine.stages import finish, test_stage, train_stage

    outcome = train_stage(options, "run")
    if outcome.done:
        test_stage(outcome.run_dir, tuple(k.split("/")[-1] for k in outcome.done), outcome=outcome)
    finish(outcome)


@click.command("train", context_settings=CONTEXT)
@training_options
@fail_cleanly
def train_command(**options) -> None:
    """Train a detector per machine type on its train.h5 shard; save models and thresholds."""
    from asd.engine.stages import finish, train_stage

    outcome = train_stage(options, "train")
    if outcome.done:
        click.echo(f"next: python source/main.py test --run {outcome.run_dir}")
    finish(outcome)


@click.command("test", context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: the run's).")
@click.option("--device", default=None, type=DEVICE, help="Override the device used for training.")
@click.option("--ground-truth", "ground_truth", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Official eval-set ground truth: also compute the evaluation-set figures (see `evaluate`).")
@config_option
@fail_cleanly
def test_command(run_dir: Path, machines: tuple[str, ...], device: str | None, ground_truth: Path | None) -> None:
    """Score the test shards with a run's models; write official files, metrics and plots."""
    from asd.engine.stages import finish, test_stage

    if ground_truth is not None:
        from asd.evaluation.ground_truth import load_ground_truth

        load_ground_truth(ground_truth)  # a bad folder is refused (EvaluationError) before any scoring
    outcome = test_stage(run_dir, machines, device)
    if ground_truth is not None:
        from asd.cli.data import run_evaluation

        run_evaluation(ground_truth, [run_dir])
    finish(outcome)


@click.command("summarize", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison as a page here [default: <common parent of RUNS>/compare.html].")
@fail_cleanly
def summarize_command(runs: tuple[Path, ...], html_path: Path | None) -> None:
    """One table over machine types; several runs side by side."""
    from asd.reports.summary import compare_runs

    click.echo(compare_runs(list(runs)))
    from asd.reports.run_page import default_comparison_path, write_comparison_page
    click.echo(f"page: {write_comparison_page(list(runs), html_path or default_comparison_path(list(runs)))}")


@click.command("score", context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--machine", required=True, help="Machine type whose model scores the files.")
@click.option("--dataset", default=None, help="Dataset of that machine type, if several have it.")
@click.option("--out", "out_csv", default=None, type=click.Path(path_type=Path),
              help="CSV to write (default: <run>/scores_<machine>_<time>.csv); its folder must exist.")
@click.option("--aggregate", type=click.Choice(REDUCERS), default=None, help="Default: the model's.")
@click.option("--device", default="auto", type=DEVICE, help="auto | cpu | cuda | cuda:N")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_option
@fail_cleanly
def score_command(run_dir, machine, dataset, out_csv, aggregate, device, paths) -> None:
    """Score any wav files or folders with a trained model: file, score, threshold, decision."""
    # where the scores go and the device are checked before the scoring work, so no result is lost
    out_csv = check_out_file(out_csv or run_dir / f"scores_{machine}_{datetime.now():%Y%m%d-%H%M%S}.csv",
                             "--out")
    import pandas as pd

    from asd.engine.score_files import score_paths
    from asd.models.base import resolve_device

    resolve_device(device)
    table, skipped = score_paths(run_dir, machine, list(paths), dataset=dataset, aggregate=aggregate,
                                 device=device)
    table.to_csv(out_csv, index=False)
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        click.echo(table.to_string(index=False))
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    flagged = int(table["decision"].sum())
    click.echo(f"{len(table)} files scored, {flagged} flagged anomalous -> {out_csv}")
