"""`asd run|train|test|summarize|score` (= `python source/main.py ...`): the stages on the command line.

Each command builds the run configuration once (`asd.engine.config.RunConfig`), hands it to the engine,
and says what happened. Only the project's own errors (asd.errors.AsdError) become a one-line message with
exit status 2; any other exception is a bug and keeps its traceback. A stage that finishes with some
machine types failed exits 1 after saying which. Nothing heavy is imported at module level, so `--help`
stays fast.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click

from asd.cli.config_file import config_option, effective_config_text
from asd.cli.options import (
    COMMA_LIST,
    CONTEXT,
    DEVICE,
    EPOCHS,
    PATIENCE,
    PERCENTILE,
    SEED,
    SEED_LIMIT,
    THREADS,
    VAL_FRACTION,
    fail_cleanly,
    finite_range,
)
from asd.errors import MAIN_COMMAND, BadInput
from asd.evaluation.thresholds import METHODS as THRESHOLD_METHODS
from asd.folders import check_out_file, write_atomically
from asd.models.registry import DEFAULT_MODEL, DEFAULT_THREADS, MODELS, REDUCERS


def training_options(func):
    """Options shared by `run` and `train` (and `python source/main.py` with no subcommand)."""
    options = [
        click.option("--processed-dir", default="data/processed", type=click.Path(path_type=Path),
                     help="Shards written by data_prep."),
        click.option("--output-dir", default=None, type=click.Path(path_type=Path),
                     help="Run folder (default: a new output/<time>_<model>/)."),
        click.option("--model", type=click.Choice(tuple(MODELS)), default=DEFAULT_MODEL),
        click.option("--machines", type=COMMA_LIST, default="", show_default=False,
                     help="Comma-separated machine types (default: all)."),
        click.option("--aux-processed-dir", "aux_processed_dir", multiple=True,
                     type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Another processed folder (repeatable) whose normal training clips the learned "
                          "models (embed, twobranch) also learn from, as extra classes; never scored."),
        click.option("--members", type=COMMA_LIST, default="", show_default=False,
                     help="With --model ensemble or auto: its member models, comma-separated (default: gmm,embed; "
                          "auto adds the later members only from 500 training clips per machine type)."),
        click.option("--model-option", "model_option", multiple=True, metavar="FIELD=VALUE",
                     help="Set a field of the model's config (repeatable), e.g. --model-option n_networks=3 "
                          "with --model embed; the fields are listed when one is wrong."),
        click.option("--epochs", default=None, type=EPOCHS,
                     help="Train exactly this many epochs, >= 1 (default: stop early, see --max-epochs)."),
        click.option("--max-epochs", default=None, type=EPOCHS,
                     help="Most epochs when stopping early (default: the model's, 100 for the autoencoders)."),
        click.option("--patience", default=5, type=PATIENCE,
                     help="Stop early after this many epochs without improvement of the held-out loss."),
        click.option("--min-delta", default=0.005, type=finite_range(low=0, high=1, high_open=True),
                     help="Relative improvement of the held-out loss that counts, in [0, 1)."),
        click.option("--seed", default=0, type=SEED, help="Random seed, >= 0 (same seed, same scores)."),
        click.option("--device", default="auto", type=DEVICE, help="auto | cpu | cuda | cuda:N"),
        click.option("--threads", default=DEFAULT_THREADS, type=THREADS,
                     help="torch threads per training process (0 = every core; more threads than free cores "
                          "slow training down several times on a busy machine)."),
        click.option("--val-fraction", default=0.0, type=VAL_FRACTION,
                     help="Share of normal training clips held out of everything (by clip), in [0, 1): their "
                          "false-alarm rate at the thresholds is an independent check. Thresholds always come "
                          "from out-of-fold scores of the training clips."),
        click.option("--aggregate", type=click.Choice(REDUCERS), default="mean",
                     help="How segment scores become a clip score (models that score segments: ae, ae-maha)."),
        click.option("--threshold-percentile", default=90.0, type=PERCENTILE,
                     help="Percentile of the out-of-fold normal scores the threshold sits at, in (0, 100)."),
        click.option("--threshold-method", type=click.Choice(THRESHOLD_METHODS), default="gamma"),
    ]
    for option in reversed(options):
        func = option(func)
    return config_option(func)


def execution_options(func):
    """How `run` is executed: where the tasks run, and how many seeds."""
    func = click.option("--seeds", default="",
                        help="Comma-separated seeds: one complete run folder each (<run>/seed_<s>/), and the "
                             "official score's mean ± sd over them.")(func)
    return click.option("--scheduler", default=None,
                        help="Run machine types as Dask tasks: local[:N] worker processes, or a scheduler "
                             "address.")(func)


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise BadInput(f"--seeds {text!r}: expected whole numbers >= 0, e.g. 0,1,2") from None
    if any(not 0 <= s <= SEED_LIMIT for s in seeds) or len(set(seeds)) != len(seeds):
        raise BadInput(f"--seeds {text!r}: expected distinct whole numbers from 0 to {SEED_LIMIT}, e.g. 0,1,2")
    return seeds


def train_and_maybe_test(options: dict, command: str, test: bool) -> None:
    """`run` (test=True) and `train`: the configuration built once, then the engine's train stage, in this
    process or as Dask tasks."""
    from asd.engine.config import RunConfig
    from asd.engine.stages import InProcess, finish, train_stage
    from asd.run_folder import RunFolder, new_run_path

    scheduler, seeds_text = options.get("scheduler"), options.get("seeds", "")
    seeds = _seed_list(seeds_text)
    executor = None
    if scheduler:
        from asd.engine.distributed import DaskExecutor

        executor = DaskExecutor(scheduler, log=click.echo)  # the address is checked here, before any work
    config = RunConfig.from_options(options)  # the model's own settings are checked here too
    folder = RunFolder(options["output_dir"] or new_run_path(config.model))
    left_out = {"output_dir": "a repeat writes a new run folder; add --output-dir to choose one"}
    left_out |= {k: why for k, why in (("scheduler", "how the tasks ran, not what they computed"),
                                        ("seeds", "each seed's run folder has its own seed"))
                 if options.get(k)}

    def write_config_yaml(plan_config: RunConfig, plan_folder: RunFolder) -> None:
        shown = {k: v for k, v in options.items() if k not in ("scheduler", "seeds") or options.get(k)}
        shown["seed"] = plan_config.fit.seed
        plan_folder.write_config_yaml(effective_config_text(shown, f"{MAIN_COMMAND} {command}",
                                                            plan_folder.config_yaml, left_out))

    with executor or nullcontext():
        outcomes = train_stage(config, folder, executor or InProcess(), test=test, seeds=seeds,
                               on_folder=write_config_yaml)
    if not test and any(outcome.done for outcome in outcomes):
        click.echo(f"next: {MAIN_COMMAND} test --run {folder}")
    finish(outcomes)


@click.command("run", context_settings=CONTEXT)
@training_options
@execution_options
@fail_cleanly
def run_command(**options) -> None:
    """Train, then test, every machine type found (the default when no subcommand is given)."""
    train_and_maybe_test(options, "run", test=True)


@click.command("train", context_settings=CONTEXT)
@training_options
@fail_cleanly
def train_command(**options) -> None:
    """Train a detector per machine type on its train.h5 shard; save models and thresholds."""
    train_and_maybe_test(options, "train", test=False)


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
    from asd.run_folder import RunFolder

    if ground_truth is not None:
        from asd.evaluation.ground_truth import load_ground_truth

        load_ground_truth(ground_truth)  # a bad folder is refused (EvaluationError) before any scoring
    outcome = test_stage(RunFolder(run_dir), machines, device)
    if ground_truth is not None:
        from asd.evaluation.ground_truth import evaluate_folders

        if not evaluate_folders(ground_truth, [run_dir], echo=click.echo,
                            echo_error=lambda line: click.echo(line, err=True)):
            raise SystemExit(2)
    finish([outcome])


@click.command("summarize", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the comparison as a page here [default: <common parent of RUNS>/compare.html, "
                   "or compare-<n>.html when that exists].")
@fail_cleanly
def summarize_command(runs: tuple[Path, ...], html_path: Path | None) -> None:
    """One table over machine types; several runs side by side."""
    from asd.folders import check_writable_dir
    from asd.reports.backend import check_plotting
    from asd.reports.run_page import default_comparison_path, write_comparison_page
    from asd.reports.summary import compare_runs

    check_plotting()
    if html_path is not None and html_path.is_dir():
        raise BadInput(f"--html {html_path} is a folder; give a file name, e.g. {html_path / 'compare.html'}")
    check_writable_dir((html_path or default_comparison_path(list(runs))).parent, "--html folder")

    click.echo(compare_runs(list(runs)))
    replaced = html_path is not None and html_path.exists()
    page = write_comparison_page(list(runs), html_path or default_comparison_path(list(runs)))
    click.echo(f"page: {page}" + ("  (replaced the page that was there)" if replaced else ""))


@click.command("score", context_settings=CONTEXT)
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--machine", required=True, help="Machine type whose model scores the files.")
@click.option("--dataset", default=None, help="Dataset of that machine type, if several have it.")
@click.option("--out", "out_csv", default=None, type=click.Path(path_type=Path),
              help="CSV to write (default: <run>/scores_<machine>_<time>.csv); its folder must exist.")
@click.option("--aggregate", type=click.Choice(REDUCERS), default=None,
              help="Default: the model's. Another reducer than the one its thresholds were fitted with is "
                   "refused.")
@click.option("--device", default="auto", type=DEVICE, help="auto | cpu | cuda | cuda:N")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_option
@fail_cleanly
def score_command(run_dir, machine, dataset, out_csv, aggregate, device, paths) -> None:
    """Score any wav files or folders with a trained model: file, score, threshold, decision."""
    from asd.run_folder import RunFolder

    folder = RunFolder(run_dir)
    # where the scores go is checked before the scoring work, so no result is lost
    out_csv = check_out_file(out_csv or folder.scores_csv(machine), "--out")
    import pandas as pd

    from asd.engine.score_files import check_aggregate, score_paths
    from asd.models.checkpoint import load_detector
    from asd.models.device import resolve_device

    detector = load_detector(folder.find_model(machine, dataset))
    check_aggregate(detector, aggregate)
    resolve_device(device)
    table, skipped = score_paths(detector, machine, list(paths), device=device)
    write_atomically(out_csv, table.to_csv(index=False))  # a full disk leaves no CSV cut mid-number
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        click.echo(table.to_string(index=False))
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    flagged = int(table["decision"].sum())
    click.echo(f"{len(table)} files scored, {flagged} flagged anomalous -> {out_csv}")
