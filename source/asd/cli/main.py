"""The one command line: `asd` (console script), `python source/main.py` and `python source/data_prep.py`.

Every stage is a subcommand of the group `main`: synth, prep, inspect, explore, train, test, run, score,
summarize, download, evaluate. Commands import torch, h5py and pandas only when they run, and the heavier
command modules are loaded only when asked for (`LAZY_COMMANDS`), so `--help` is fast.
"""

from __future__ import annotations

import importlib

import click

from asd.cli.cache import inspect_command, synth_command
from asd.cli.options import CONTEXT
from asd.cli.run import (
    execution_options,
    run_command,
    score_command,
    summarize_command,
    test_command,
    train_command,
    training_options,
)


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
@execution_options
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions).

    With no subcommand: train then test every machine type found in --processed-dir (the options above
    are those of `run`). Stages: synth -> prep (= source/data_prep.py) -> inspect -> train -> test ->
    summarize; `score` scores any wav files with a trained model. Exit status: 0 done, 1 some machine
    types failed (the others are done; the summary says which), 2 bad input or bad state (one line).
    """
    if (options["scheduler"] or options["seeds"]) and ctx.invoked_subcommand is not None:
        raise click.UsageError("--scheduler/--seeds before a subcommand apply to nothing; give them after `run`")
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_command, **options)


for _command in (synth_command, inspect_command, run_command, train_command, test_command, summarize_command,
                 score_command):
    main.add_command(_command)

