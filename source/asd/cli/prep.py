"""Command line of data_prep (`python source/data_prep.py`).

Every option is checked before any work starts (click's types and ranges, then the combinations), and a
bad one gets a one-line message naming it and what is allowed. The project's own errors (`AsdError`)
become one-line messages with exit status 2; a run where some shard failed exits 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from contextlib import nullcontext

import click

from asd.cache.features import CHANNEL_POLICIES, TAIL_POLICIES, FeatureConfig
from asd.cli.config_file import config_option, effective_config_text
from asd.cli.options import COMMA_LIST, CONTEXT, fail_cleanly, finite_range
from asd.errors import MAIN_COMMAND, PREP_COMMAND

POSITIVE_SECONDS = finite_range(low=0.0, low_open=True, high=600.0)


def _check_jobs(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value == 0:
        raise click.BadParameter("must be a positive number of workers, or negative (-1 = all cores)")
    return value


def feature_config(segment_seconds: float, hop_seconds: float, tail: str, channel: str, n_mels: int,
                   n_fft: int, hop_length: int) -> FeatureConfig:
    """The feature settings, or a `click.UsageError` naming the option that makes them impossible."""
    rate = FeatureConfig.sample_rate
    segment = int(round(segment_seconds * rate))
    if segment < n_fft:
        raise click.BadParameter(f"{n_fft} is longer than a segment (--segment-seconds {segment_seconds} = "
                                 f"{segment} samples); use --n-fft <= {segment} or longer segments",
                                 param_hint="'--n-fft'")
    if hop_length > n_fft:
        raise click.BadParameter(f"{hop_length} is longer than --n-fft {n_fft} (samples would be skipped)",
                                 param_hint="'--hop-length'")
    if n_mels > n_fft // 2 + 1:
        raise click.BadParameter(f"{n_mels} mel bands need more than the {n_fft // 2 + 1} frequency bins of "
                                 f"--n-fft {n_fft}; use --n-mels <= {n_fft // 2 + 1}", param_hint="'--n-mels'")
    if int(round(hop_seconds * rate)) < 1:
        raise click.BadParameter(f"{hop_seconds} is shorter than one sample", param_hint="'--hop-seconds'")
    try:
        return FeatureConfig(segment_seconds=segment_seconds, hop_seconds=hop_seconds, tail=tail,
                             channel=channel, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
    except ValueError as err:  # anything the checks above missed is still a usage error, not a traceback
        raise click.UsageError(f"impossible feature settings: {err}") from err


@click.command(context_settings=CONTEXT)
@click.option("--raw-dir", default="data/raw", type=click.Path(exists=True, file_okay=False),
              help="Root holding <dataset>/<machine>/{train,test}/*.wav.")
@click.option("--out-dir", default="data/processed", type=click.Path(),
              help="Where the shards go (mirrors the raw tree).")
@click.option("--jobs", default=-1, type=click.IntRange(-4096, 4096), callback=_check_jobs,
              help="Parallel workers (-1 = all cores, -2 = all but one, ...).")
@click.option("--machines", type=COMMA_LIST, default="", show_default=False,
              help="Comma-separated machine types (default: all found).")
@click.option("--segment-seconds", default=1.0, type=POSITIVE_SECONDS, help="Segment length.")
@click.option("--hop-seconds", default=1.0, type=POSITIVE_SECONDS, help="Hop between segment starts.")
@click.option("--tail", type=click.Choice(TAIL_POLICIES), default="last",
              help="Audio after the last whole segment: 'last' = one more segment aligned to the clip "
                   "end, 'pad' = zero-padded segment, 'drop' = discard.")
@click.option("--channel", type=click.Choice(CHANNEL_POLICIES), default="left",
              help="Which channel of stereo files to keep (DCASE 2026: left = near mic).")
@click.option("--n-mels", default=128, type=click.IntRange(1, 1024))
@click.option("--n-fft", default=1024, type=click.IntRange(8, 65536))
@click.option("--hop-length", default=512, type=click.IntRange(1, 65536), help="STFT hop in samples.")
@click.option("--force", is_flag=True, help="Rebuild shards even when they are up to date.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--scheduler", default=None,
              help="Build shards as Dask tasks: local[:N] worker processes, or a scheduler address "
                   "(the workers must see --raw-dir and --out-dir).")
@config_option
@fail_cleanly
def prep_command(raw_dir: str, out_dir: str, jobs: int, machines: tuple[str, ...], segment_seconds: float,
                 hop_seconds: float, tail: str, channel: str, n_mels: int, n_fft: int, hop_length: int,
                 force: bool, quiet: bool, scheduler: str | None = None) -> None:
    """Cut every clip into segments and cache waveform + log-mel in one HDF5 shard per
    dataset x machine type x split. A second run with the same settings does no work."""
    features = feature_config(segment_seconds, hop_seconds, tail, channel, n_mels, n_fft, hop_length)
    executor = None
    if scheduler:  # one Dask task per shard, each through the same build_shard
        from asd.engine.distributed import DaskExecutor

        executor = DaskExecutor(scheduler, log=click.echo)  # the address is checked here, before any work
    from asd.cache.build import PrepConfig, run_prep  # after the checks: a bad option costs no heavy import
    from asd.cache.store import prep_config_path
    from asd.folders import write_atomically

    cfg = PrepConfig(raw_dir=raw_dir, out_dir=out_dir, jobs=jobs, force=force, features=features,
                     machines=tuple(machines))
    with executor or nullcontext():
        summary = run_prep(cfg, show_progress=not quiet, executor=executor)
    for line in summary.lines():
        click.echo(line)
    path = prep_config_path(out_dir)
    write_atomically(path, effective_config_text(click.get_current_context().params, PREP_COMMAND, path))
    if summary.shards_failed:
        first = summary.shards_failed[0]
        click.echo(f"error: {len(summary.shards_failed)} shard(s) not written ({first.path}: {first.reason}"
                   f"{'; see above' if len(summary.shards_failed) > 1 else ''}); every shard written is complete",
                   err=True)
        raise SystemExit(1)
    click.echo(f"shards in {out_dir}; look inside with `{MAIN_COMMAND} inspect SHARD.h5`")
