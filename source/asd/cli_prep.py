"""Command line of data_prep (`python source/data_prep.py`)."""

from __future__ import annotations

import sys

import click

from asd.cli_config import config_option
from asd.cli_options import COMMA_LIST
from asd.errors import AsdError
from asd.features import CHANNEL_POLICIES, TAIL_POLICIES, FeatureConfig
from asd.prep import PrepConfig, run_prep
from asd.shard import StaleShard


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--raw-dir", default="data/raw", help="Root holding <dataset>/<machine>/{train,test}/*.wav.")
@click.option("--out-dir", default="data/processed", help="Where the shards go (mirrors the raw tree).")
@click.option("--jobs", default=-1, type=int, help="Worker processes (-1 = all cores).")
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: all found).")
@click.option("--segment-seconds", default=1.0, type=float, help="Segment length.")
@click.option("--hop-seconds", default=1.0, type=float, help="Hop between segment starts.")
@click.option("--tail", type=click.Choice(TAIL_POLICIES), default="last",
              help="Audio after the last whole segment: 'last' = one more segment aligned to the clip "
                   "end, 'pad' = zero-padded segment, 'drop' = discard.")
@click.option("--channel", type=click.Choice(CHANNEL_POLICIES), default="left",
              help="Which channel of stereo files to keep (DCASE 2026: left = near mic).")
@click.option("--n-mels", default=128, type=int)
@click.option("--n-fft", default=1024, type=int)
@click.option("--hop-length", default=512, type=int, help="STFT hop in samples.")
@click.option("--force", is_flag=True, help="Rebuild shards even when they are up to date.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--scheduler", default=None,
              help="Build shards as Dask tasks: local[:N] worker processes, or a scheduler address "
                   "(the workers must see --raw-dir and --out-dir).")
@config_option
def prep_command(raw_dir: str, out_dir: str, jobs: int, machines: str, segment_seconds: float,
                 hop_seconds: float, tail: str, channel: str, n_mels: int, n_fft: int, hop_length: int,
                 force: bool, quiet: bool, scheduler: str | None = None) -> None:
    """Cut every clip into segments and cache waveform + log-mel in one HDF5 shard per
    dataset x machine type x split. A second run with the same settings does no work."""
    try:
        features = FeatureConfig(segment_seconds=segment_seconds, hop_seconds=hop_seconds, tail=tail,
                                 channel=channel, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
        cfg = PrepConfig(raw_dir=raw_dir, out_dir=out_dir, jobs=jobs, force=force, features=features,
                         machines=tuple(machines))
        if scheduler:
            from asd.distributed import TaskFailures, check_scheduler, run_prep_distributed

            try:
                summary = run_prep_distributed(cfg, check_scheduler(scheduler), log=click.echo)
            except TaskFailures as err:
                click.echo(f"error: {err}", err=True)
                sys.exit(1)
        else:
            summary = run_prep(cfg, show_progress=not quiet)
    except (AsdError, StaleShard, FileNotFoundError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    for line in summary.lines():
        click.echo(line)
    from pathlib import Path

    from asd.cli_config import write_effective_config

    write_effective_config(Path(out_dir) / "data_prep_config.yaml", click.get_current_context().params,
                           "python source/data_prep.py")
    click.echo(f"shards in {out_dir}; look inside with `python source/main.py inspect SHARD.h5`")
