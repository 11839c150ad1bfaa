"""The one command line: `asd` (console script), `python source/main.py` and `python source/data_prep.py`.

Every stage is a subcommand of the group `main`: prep, synth, inspect, train, test, run, score,
summarize; later modules add theirs with `main.add_command`. Commands import torch, h5py and pandas only
when they run, and `prep` is loaded only when asked for, so `--help` is fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from asd.cli.config_file import config_option
from asd.cli.options import COMMA_LIST, CONTEXT, JOBS, POSITIVE, SEED
from asd.cli.run import (
    fail_cleanly,
    run_command,
    score_command,
    summarize_command,
    test_command,
    train_command,
    training_options,
)
from asd.errors import BadInput


class LazyGroup(click.Group):
    """A group whose heavier commands are imported only when called (their one-line help is kept here)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})  # name -> ("module:attribute", one-line help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name][0].split(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                rows.append((name, self.lazy[name][1]))
            else:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


LAZY_COMMANDS = {
    "prep": ("asd.cli.prep:prep_command",
             "Cache every clip as 1-second segments in HDF5 shards (= source/data_prep.py)."),
    "download": ("asd.cli.data:download_command",
                 "Download, verify and unpack official DCASE Task 2 archives into data/raw."),
    "explore": ("asd.cli.explore:explore_command",
                "One self-contained HTML page per dataset: counts, levels, spectra, examples, odd clips."),
    "evaluate": ("asd.cli.data:evaluate_command",
                 "Official eval-set figures of runs or submission folders from the published ground truth."),
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings=CONTEXT, invoke_without_command=True)
@training_options
@click.option("--scheduler", default=None,
              help="Run machine types as Dask tasks: local[:N] worker processes, or a scheduler address.")
@click.option("--seeds", default="", help="With --scheduler: comma-separated seeds, one run folder each.")
@click.pass_context
def main(ctx: click.Context, scheduler: str | None = None, seeds: str = "", **options) -> None:
    """Anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions).

    With no subcommand: train then test every machine type found in --processed-dir (the options above
    are those of `run`). Stages: synth -> prep (= source/data_prep.py) -> inspect -> train -> test ->
    summarize; `score` scores any wav files with a trained model. Exit status: 0 done, 1 some machine
    types failed (the others are done; the summary says which), 2 bad input or bad state (one line).
    """
    if (scheduler or seeds) and ctx.invoked_subcommand is not None:
        raise click.UsageError("--scheduler/--seeds apply to the default train+test run (no subcommand)")
    if seeds and not scheduler:
        raise click.UsageError("--seeds needs --scheduler (use --seed for a single-machine run)")
    if ctx.invoked_subcommand is None and scheduler:
        from asd.cli.data import distributed_run

        distributed_run(scheduler, seeds, options)
    elif ctx.invoked_subcommand is None:
        ctx.invoke(run_command, **options)


@main.command("synth", context_settings=CONTEXT)
@click.option("--out", "out_dir", default="data/raw/synth", type=click.Path(path_type=Path),
              help="Folder to write the dataset into.")
@click.option("--seed", default=0, type=SEED, help="Same seed, same bytes (>= 0).")
@click.option("--scale", default=1.0, type=POSITIVE,
              help="Multiplies the clip counts (1.0 = DCASE size: 990+10 train, 200 test per machine).")
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: all).")
@click.option("--naming", type=click.Choice(["2024", "2020"]), default="2024", help="DCASE naming style.")
@click.option("--stereo", is_flag=True, help="Write 2-channel clips (DCASE 2026: left near, right far mic).")
@click.option("--hidden-attributes", type=COMMA_LIST, default="", help="Machine types whose attributes are hidden.")
@click.option("--anomaly-strength", default=1.0, type=click.FloatRange(min=0),
              help="Scales every anomaly (0 = inaudible).")
@click.option("--clip-seconds", default=10.0, type=POSITIVE)
@click.option("--jobs", default=-1, type=JOBS, help="Worker processes (-1 = all cores).")
@config_option
@fail_cleanly
def synth_command(out_dir: Path, seed: int, scale: float, machines: tuple[str, ...], naming: str, stereo: bool,
                  hidden_attributes: tuple[str, ...], anomaly_strength: float, clip_seconds: float,
                  jobs: int) -> None:
    """Write a synthetic DCASE-like development dataset (2024 layout and naming by default)."""
    import time

    from asd.cli.options import check_writable_dir
    from asd.dataset.synth import MACHINE_TYPES, generate_dataset

    unknown = sorted((set(machines) | set(hidden_attributes)) - set(MACHINE_TYPES))
    if unknown:
        raise BadInput(f"--machines/--hidden-attributes: unknown machine type(s) {', '.join(unknown)}; "
                       f"synth makes {', '.join(sorted(MACHINE_TYPES))}")
    check_writable_dir(out_dir, "--out")
    start = time.perf_counter()
    files = generate_dataset(
        str(out_dir), seed=seed, scale=scale, machines=list(machines) or None, naming=naming, stereo=stereo,
        hidden_attributes=list(hidden_attributes), anomaly_strength=anomaly_strength,
        clip_seconds=clip_seconds, n_jobs=jobs,
    )
    seconds = time.perf_counter() - start
    counts = files.groupby(["machine", "split", "domain", "label"]).size()
    click.echo(f"synth: {len(files)} clips of {clip_seconds:g} s in {seconds:.1f} s -> {out_dir}")
    click.echo("  " + counts.to_string().replace("\n", "\n  "))


@main.command("inspect", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--names", default=5, type=click.IntRange(min=0), help="How many segment names to list.")
@click.option("--png", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of one segment's log-mel and waveform here.")
@click.option("--segment", default=0, type=click.IntRange(min=0), help="Which segment the PNG shows.")
@config_option
@fail_cleanly
def inspect_command(path: Path, names: int, png: Path | None, segment: int) -> None:
    """Show what a shard holds (settings, counts, shapes, names, notes). A folder lists its shards."""
    from asd.cache.shard import Shard, find_shards
    from asd.cli.options import check_writable_dir
    from asd.run_checks import check_shard

    if path.is_dir():
        shards = find_shards(path)
        if not shards:
            raise BadInput(f"no shards under {path}; run `python source/data_prep.py`")
        for shard_path in shards:
            check_shard(shard_path)
            attrs = Shard(shard_path).attrs
            click.echo(f"{shard_path}  clips={attrs['n_clips']} segments={attrs['n_segments']} "
                       f"fingerprint={attrs['fingerprint']}")
        return
    check_shard(path)
    if png is not None:
        if png.is_dir():
            raise BadInput(f"--png {png} is a folder; give a file name, e.g. {png / 'segment.png'}")
        check_writable_dir(png.parent, "--png folder")
        n_segments = Shard(path).n_segments
        if segment >= n_segments:
            raise BadInput(f"--segment {segment} is out of range: {path} has {n_segments} segments "
                           f"(0 to {n_segments - 1})")
    from asd.cache.inspect import describe_shard, plot_segment

    click.echo(describe_shard(path, n_names=names))
    if png is not None:
        click.echo(f"\nwrote {plot_segment(path, segment, png)}")


for _command in (run_command, train_command, test_command, summarize_command, score_command):
    main.add_command(_command)

