"""`python source/main.py download|evaluate`: official datasets in, official evaluation-set figures out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.command("download", context_settings=CONTEXT)
@click.argument("dataset")
@click.option("--dev", is_flag=True, help="The development set (default: dev and eval when neither is given).")
@click.option("--eval", "eval_", is_flag=True, help="The evaluation set: additional training and test data.")
@click.option("--machines", default="", help="Comma-separated machine types (default: all of the set).")
@click.option("--raw-dir", default="data/raw", type=click.Path(path_type=Path))
@click.option("--base-url", default="https://zenodo.org", help="Zenodo or a mirror with the same paths.")
@click.option("--keep-archives", is_flag=True, help="Keep the verified zips in <raw-dir>/.downloads/.")
@click.option("--retries", default=4, type=click.IntRange(0, 20))
@click.option("--catalog", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Another archive list in the shipped JSON's shape (default: the official one).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download_command(dataset, dev, eval_, machines, raw_dir, base_url, keep_archives, retries, catalog, quiet):
    """Fetch, verify (size, MD5, CRC of every member) and unpack a DCASE Task 2 set (dcase2020t2 ...
    dcase2025t2) into <raw-dir>/<dataset>/<dev_data|eval_data>/raw/<machine>/. Resumable; a second run
    only checks."""
    from asd.dataset.download import DownloadError, download_dataset, load_catalog, select_archives

    try:
        table = load_catalog(catalog)
        archives = select_archives(table, dataset, dev, eval_, [m for m in machines.split(",") if m] or None)
        click.echo(f"download {dataset}: {len(archives)} archive(s) -> {raw_dir}")
        status = download_dataset(archives, raw_dir, table, base_url=base_url, keep_archives=keep_archives,
                                  retries=retries, show_progress=not quiet, log=click.echo)
    except (DownloadError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    fresh = sum(v == "done" for v in status.values())
    click.echo(f"{fresh} archive(s) unpacked, {len(status) - fresh} already up to date; "
               f"next: python source/data_prep.py --raw-dir {raw_dir}")


@click.command("evaluate", context_settings=CONTEXT)
@click.option("--ground-truth", "ground_truth", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with ground_truth_data/, ground_truth_domain/ (and ground_truth_attributes/).")
@click.option("--no-ci", is_flag=True, help="Skip the jackknife confidence interval (it refits N times).")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def evaluate_command(ground_truth: Path, no_ci: bool, folders: tuple[Path, ...]) -> None:
    """Official evaluation-set figures of run folders or official-format submission folders."""
    run_evaluation(ground_truth, folders, with_ci=not no_ci)


def run_evaluation(ground_truth: Path, folders, with_ci: bool = True) -> None:
    """Evaluate every submission folder found in `folders`; exit 2 with every mismatch listed."""
    from asd.evaluation.ground_truth import (
        EvaluationError,
        evaluate_folder,
        format_evaluation,
        load_ground_truth,
        submission_folders,
        write_evaluation,
    )

    failed = False
    try:
        truth = load_ground_truth(ground_truth)
    except EvaluationError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    for folder in folders:
        found = [f for f in submission_folders(folder)  # e.g. a run holding a dev and an eval dataset
                 if any(any(f.glob(f"anomaly_score_{m}_*.csv")) for m in truth.machines)]
        if not found:
            click.echo(f"error: no anomaly_score_*.csv files of {', '.join(truth.machines)} in or below {folder}",
                       err=True)
            failed = True
            continue
        for sub in found:
            try:
                ev = evaluate_folder(sub, truth, with_ci=with_ci)
            except EvaluationError as err:
                click.echo(f"error: {err}", err=True)
                failed = True
                continue
            out = write_evaluation(ev, sub.parent / "evaluation" if sub.name == "submission" else
                                   sub / "evaluation", truth.rules)
            click.echo(format_evaluation(ev, truth.rules))
            click.echo(f"  -> {out}")
    if failed:
        sys.exit(2)


def distributed_run(scheduler: str, seeds: str, options: dict) -> None:
    """`python source/main.py --scheduler ...`: the default train+test run, one Dask task per machine type
    (x seed). Exit 1 when a task failed (the others' results are written; a rerun finishes the rest)."""
    from asd.cache.shard import StaleShard
    from asd.engine.distributed import check_scheduler, run_distributed
    from asd.models.base import FingerprintMismatch

    try:
        check_scheduler(scheduler)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] or None
    except ValueError as err:
        raise click.UsageError(str(err) if "scheduler" in str(err) else f"--seeds {seeds!r}: expected 0,1,2") \
            from None
    from asd.engine.stages import new_run_dir, train_config_from_options

    if options.get("members") or options.get("model_option"):
        raise click.UsageError("--members/--model-option are not passed to --scheduler tasks yet; run without "
                               "--scheduler, or with the model's defaults")
    train = train_config_from_options(options)
    run_dir = options["output_dir"] or new_run_dir(options["model"])
    machines = list(options["machines"]) or None
    try:
        failures = run_distributed(Path(options["processed_dir"]), Path(run_dir), options["model"], train,
                                   machines, seed_list, scheduler, log=click.echo)
    except (FileNotFoundError, FingerprintMismatch, StaleShard, OSError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if failures:
        click.echo(f"{len(failures)} task(s) failed; the others' results are in {run_dir}. Rerun the same "
                   "command to finish only what is missing:\n  " + "\n  ".join(failures), err=True)
        sys.exit(1)
