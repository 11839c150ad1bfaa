"""Command line of `python source/main.py`: synth, inspect, and (later stages) train, test, score."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from asd.cli_run import run_command, training_options
from asd.inspect_shard import describe_shard, plot_segment
from asd.shard import Shard, StaleShard, find_shards

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT, invoke_without_command=True)
@training_options
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions).

    With no subcommand: train then test every machine type found in --processed-dir (the options above
    are those of `run`). Stages: synth -> (source/data_prep.py) -> inspect -> train -> test -> summarize;
    `score` scores any wav files with a trained model.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_command, **options)


@main.command("synth", context_settings=CONTEXT)
@click.option("--out", "out_dir", default="data/raw/synth", help="Folder to write the dataset into.")
@click.option("--seed", default=0, type=int, help="Same seed, same bytes.")
@click.option("--scale", default=1.0, type=float,
              help="Multiplies the clip counts (1.0 = DCASE size: 990+10 train, 200 test per machine).")
@click.option("--machines", default="", help="Comma-separated machine types (default: all).")
@click.option("--naming", type=click.Choice(["2024", "2020"]), default="2024", help="DCASE naming style.")
@click.option("--stereo", is_flag=True, help="Write 2-channel clips (DCASE 2026: left near, right far mic).")
@click.option("--hidden-attributes", default="", help="Machine types whose attributes are hidden.")
@click.option("--anomaly-strength", default=1.0, type=float, help="Scales every anomaly (0 = inaudible).")
@click.option("--clip-seconds", default=10.0, type=float)
@click.option("--jobs", default=-1, type=int, help="Worker processes (-1 = all cores).")
def synth_command(out_dir: str, seed: int, scale: float, machines: str, naming: str, stereo: bool,
                  hidden_attributes: str, anomaly_strength: float, clip_seconds: float, jobs: int) -> None:
    """Write a synthetic DCASE-like development dataset (2024 layout and naming by default)."""
    import time

    from asd.synth import generate_dataset

    start = time.perf_counter()
    files = generate_dataset(
        out_dir, seed=seed, scale=scale, machines=[m for m in machines.split(",") if m] or None,
        naming=naming, stereo=stereo, hidden_attributes=[m for m in hidden_attributes.split(",") if m],
        anomaly_strength=anomaly_strength, clip_seconds=clip_seconds, n_jobs=jobs,
    )
    seconds = time.perf_counter() - start
    counts = files.groupby(["machine", "split", "domain", "label"]).size()
    click.echo(f"synth: {len(files)} clips of {clip_seconds:g} s in {seconds:.1f} s -> {out_dir}")
    click.echo("  " + counts.to_string().replace("\n", "\n  "))


@main.command("inspect", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--names", default=5, type=int, help="How many segment names to list.")
@click.option("--png", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of one segment's log-mel and waveform here.")
@click.option("--segment", default=0, type=int, help="Which segment the PNG shows.")
def inspect_command(path: Path, names: int, png: Path | None, segment: int) -> None:
    """Show what a shard holds (settings, counts, shapes, names, notes). A folder lists its shards."""
    try:
        if path.is_dir():
            shards = find_shards(path)
            if not shards:
                raise click.ClickException(f"no shards under {path}; run `python source/data_prep.py`")
            for shard_path in shards:
                shard = Shard(shard_path)
                attrs = shard.attrs
                click.echo(f"{shard_path}  clips={attrs['n_clips']} segments={attrs['n_segments']} "
                           f"fingerprint={attrs['fingerprint']}")
                shard.close()
            return
        click.echo(describe_shard(path, n_names=names))
        if png is not None:
            click.echo(f"\nwrote {plot_segment(path, segment, png)}")
    except (StaleShard, OSError, IndexError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def _register_pipeline_commands() -> None:
    from asd.cli_explore import explore_command
    from asd.cli_run import run_command, score_command, summarize_command, test_command, train_command

    for command in (run_command, train_command, test_command, summarize_command, score_command, explore_command):
        main.add_command(command)


_register_pipeline_commands()
