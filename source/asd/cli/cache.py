"""`asd synth|inspect`: a synthetic DCASE-like dataset to start from, and what a shard holds."""

from __future__ import annotations

from pathlib import Path

import click

from asd.cli.config_file import config_option
from asd.cli.options import COMMA_LIST, CONTEXT, JOBS, POSITIVE, SEED, fail_cleanly, finite_range
from asd.errors import PREP_COMMAND, BadInput
from asd.folders import check_writable_dir


@click.command("synth", context_settings=CONTEXT)
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
@click.option("--anomaly-strength", default=1.0, type=finite_range(low=0),
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


@click.command("inspect", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--names", default=5, type=click.IntRange(min=0), help="How many segment names to list.")
@click.option("--png", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of one segment's log-mel and waveform here.")
@click.option("--segment", default=0, type=click.IntRange(min=0), help="Which segment the PNG shows.")
@config_option
@fail_cleanly
def inspect_command(path: Path, names: int, png: Path | None, segment: int) -> None:
    """Show what a shard holds (settings, counts, shapes, names, notes). A folder lists its shards."""
    from asd.cache.shard import Shard, check_shard
    from asd.cache.store import find_shards, old_layout_note

    if path.is_dir():
        shards = find_shards(path)
        if not shards:
            raise BadInput(f"no shards under {path}; run `{PREP_COMMAND}`")
        for shard_path in shards:
            check_shard(shard_path)
            attrs = Shard(shard_path).attrs
            click.echo(f"{shard_path}  clips={attrs['n_clips']} segments={attrs['n_segments']} "
                       f"fingerprint={attrs['fingerprint']}")
        if note := old_layout_note(path):
            click.echo(f"note: {note}")
        return
    check_shard(path)
    if png is not None:
        if png.is_dir():
            raise BadInput(f"--png {png} is a folder; give a file name, e.g. {png / 'segment.png'}")
        check_writable_dir(png.parent, "--png folder")
        from asd.reports.backend import check_plotting

        check_plotting()
        n_segments = Shard(path).n_segments
        if segment >= n_segments:
            raise BadInput(f"--segment {segment} is out of range: {path} has {n_segments} segments "
                           f"(0 to {n_segments - 1})")
    from asd.cache.inspect import describe_shard, plot_segment

    click.echo(describe_shard(path, n_names=names))
    if png is not None:
        click.echo(f"\nwrote {plot_segment(path, segment, png)}")
