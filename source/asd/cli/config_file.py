"""`--config FILE.yaml`: every option of a command can be set in a YAML file; the command line wins.

The file is a flat mapping of option names (`val_fraction` or `val-fraction`) to values. Unknown keys are
an error naming the key. Values go through the same click types and ranges as the command line. Commands
that make a run folder write the configuration they actually used there as `config.yaml`, so
`--config output/<run>/config.yaml` repeats the run.
"""

from __future__ import annotations

from pathlib import Path

import click


def _key(name: str) -> str:
    return str(name).strip().replace("-", "_")


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    import yaml

    try:
        loaded = yaml.safe_load(Path(value).read_text())
    except yaml.YAMLError as err:
        raise click.BadParameter(f"{value} is not valid YAML: {err}", ctx, param) from None
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"{value} cannot be read: {err}", ctx, param) from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{value} must hold a mapping of option: value, not a {type(loaded).__name__}",
                                 ctx, param)
    known = {p.name: p for p in ctx.command.params if p.name and p.expose_value}
    values = {}
    for raw_key, item in loaded.items():
        key = _key(raw_key)
        if key not in known:
            raise click.BadParameter(
                f"unknown key {raw_key!r} in {value}; the keys of `{ctx.command.name}` are: "
                + ", ".join(sorted(known)), ctx, param)
        values[key] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}


def config_option(func):
    """Add `--config FILE.yaml` to a command (processed before every other option)."""
    return click.option(
        "--config", type=click.Path(exists=True, dir_okay=False), default=None, is_eager=True,
        expose_value=False, callback=_load_config,
        help="YAML file setting any option of this command (option: value); the command line overrides it.",
    )(func)


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def effective_config_text(options: dict, command: str, path: Path, left_out: dict[str, str] | None = None) -> str:
    """The options a command actually ran with, as YAML that `--config` loads back (from `path`).

    `left_out` maps option names not written to the reason, which becomes a comment (e.g. the run folder
    itself, so that a repeat writes a new one).
    """
    import yaml

    left_out = left_out or {}
    record = {k: _plain(v) for k, v in options.items() if k not in left_out}
    lines = [f"# Effective configuration of `{command}`; repeat with `--config {path}`.",
             *(f"# {k}: {_plain(options.get(k))!s}  -- not written: {why}" for k, why in left_out.items())]
    return "\n".join(lines) + "\n" + yaml.safe_dump(record, sort_keys=False, default_flow_style=False)
