"""`asd explore`: the dataset pages (see `asd.reports.explore`)."""

from __future__ import annotations

from pathlib import Path

import click

from asd.cli.options import COMMA_LIST, CONTEXT, fail_cleanly, finite_range
from asd.errors import PREP_COMMAND


@click.command("explore", context_settings=CONTEXT)
@click.option("--processed-dir", default=None, type=click.Path(path_type=Path),
              help="Shards written by data_prep [default: data/processed].")
@click.option("--raw-dir", default=None, type=click.Path(path_type=Path),
              help="Read wav files instead (a dataset not prepped yet); excludes --processed-dir.")
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: all).")
@click.option("--out", "out_dir", default="output/explore", type=click.Path(path_type=Path),
              help="Folder for the pages: <out>/<dataset>.html.")
@click.option("--examples", default=1, type=click.IntRange(0, 20),
              help="Example clips (spectrogram and audio) per machine type, split, domain and label.")
@click.option("--audio-seconds", default=2.0, type=finite_range(0.1, 60.0),
              help="Length of each embedded audio clip.")
@click.option("--least-typical", default=3, type=click.IntRange(0, 50),
              help="Training clips per machine type shown as least like their group.")
@click.option("--max-page-mb", default=5.0, type=finite_range(0.5, 500.0),
              help="Size a page aims at: audio stops being embedded at 75% of it.")
@fail_cleanly
def explore_command(processed_dir: Path | None, raw_dir: Path | None, machines: tuple[str, ...], out_dir: Path,
                    examples: int, audio_seconds: float, least_typical: int, max_page_mb: float) -> None:
    """One self-contained HTML page per dataset: counts, levels, spectra, example clips, odd clips, notes."""
    if processed_dir is not None and raw_dir is not None:
        raise click.UsageError("give --processed-dir or --raw-dir, not both")
    source = raw_dir if raw_dir is not None else (processed_dir or Path("data/processed"))
    if not source.is_dir():
        hint = "" if raw_dir is not None else f"; run `{PREP_COMMAND}` first"
        raise click.BadParameter(f"{source} is not a folder{hint}",
                                 param_hint="--raw-dir" if raw_dir is not None else "--processed-dir")
    from asd.folders import check_can_write_dir
    from asd.reports.backend import check_plotting

    check_plotting()
    check_can_write_dir(out_dir, "--out")  # a read-only place fails now, not after the statistics
    from asd.reports.explore import ExploreConfig, explore  # after the checks: it imports matplotlib

    config = ExploreConfig(processed_dir=None if raw_dir is not None else source, raw_dir=raw_dir,
                           machines=machines, out_dir=out_dir,
                           examples=examples, audio_seconds=audio_seconds, least_typical=least_typical,
                           max_page_mb=max_page_mb)
    explore(config, echo=click.echo)
