"""`asd download|evaluate`: official datasets in, official evaluation-set figures out."""

from __future__ import annotations

from pathlib import Path

import click

from asd.cli.options import COMMA_LIST, CONTEXT, fail_cleanly
from asd.errors import PREP_COMMAND


@click.command("download", context_settings=CONTEXT)
@click.argument("dataset")
@click.option("--dev", is_flag=True, help="The development set (default: dev and eval when neither is given).")
@click.option("--eval", "eval_", is_flag=True, help="The evaluation set: additional training and test data.")
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: all of the set).")
@click.option("--raw-dir", default="data/raw", type=click.Path(path_type=Path))
@click.option("--base-url", default="https://zenodo.org", help="Zenodo or a mirror with the same paths.")
@click.option("--keep-archives", is_flag=True, help="Keep the verified zips in <raw-dir>/.downloads/.")
@click.option("--retries", default=4, type=click.IntRange(0, 20))
@click.option("--catalog", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Another archive list in the shipped JSON's shape (default: the official one).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@fail_cleanly
def download_command(dataset, dev, eval_, machines, raw_dir, base_url, keep_archives, retries, catalog, quiet):
    """Fetch, verify (size, MD5, CRC of every member) and unpack a DCASE Task 2 set (dcase2020t2 ...
    dcase2025t2) into <raw-dir>/<dataset>/<dev_data|eval_data>/raw/<machine>/. Resumable; a second run
    only checks."""
    from asd.dataset.download import download_dataset, load_catalog, select_archives

    table = load_catalog(catalog)
    archives = select_archives(table, dataset, dev, eval_, list(machines) or None)
    click.echo(f"download {dataset}: {len(archives)} archive(s) -> {raw_dir}")
    status = download_dataset(archives, raw_dir, table, base_url=base_url, keep_archives=keep_archives,
                              retries=retries, show_progress=not quiet, log=click.echo)
    fresh = sum(v == "done" for v in status.values())
    click.echo(f"{fresh} archive(s) unpacked, {len(status) - fresh} already up to date; "
               f"next: {PREP_COMMAND} --raw-dir {raw_dir}")


@click.command("evaluate", context_settings=CONTEXT)
@click.option("--ground-truth", "ground_truth", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with ground_truth_data/, ground_truth_domain/ (and ground_truth_attributes/).")
@click.option("--no-ci", is_flag=True, help="Skip the jackknife confidence interval (it refits N times).")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@fail_cleanly
def evaluate_command(ground_truth: Path, no_ci: bool, folders: tuple[Path, ...]) -> None:
    """Official evaluation-set figures of run folders or official-format submission folders."""
    from asd.evaluation.ground_truth import evaluate_folders

    if not evaluate_folders(ground_truth, folders, with_ci=not no_ci, echo=click.echo,
                            echo_error=lambda line: click.echo(line, err=True)):
        raise SystemExit(2)
