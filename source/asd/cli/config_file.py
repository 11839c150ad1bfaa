"""`--config FILE.yaml`: every option of a command can be set in a YAML file; the command line wins.

The file is a flat mapping of option names (`val_fraction` or `val-fraction`) to values. Unknown keys are
an error naming the key. Every value is checked as soon as the file is read, before any work, exactly as
the command line checks it: the value is turned into the text a user would type (`1.7`, `nan`, `true`)
and goes through the option's own click type and range, so `epochs: 1.7` is refused, not truncated, and
`.nan` or `.inf` are refused like `nan` on the command line. `null` means "the default" for an option
whose default is unset (as the config.yaml a run writes has it) and is refused elsewhere; a list is
accepted only by options that take several values. Every refusal names the file and the key. Commands
that make a run folder write the configuration they actually used there as `config.yaml`, so
`--config output/<run>/config.yaml` repeats the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    for raw_key in loaded:  # every key first: a misspelt key is the likelier mistake than a bad value
        if _key(raw_key) not in known:
            raise click.BadParameter(
                f"unknown key {raw_key!r} in {value}; the keys of `{ctx.command.name}` are: "
                + ", ".join(sorted(known)), ctx, param)
    values = {}
    for raw_key, item in loaded.items():
        key = _key(raw_key)
        problem = None
        try:
            text = _as_command_line(known[key], item)
        except ValueError as err:
            problem = str(err)
        if problem is None and text is not None:
            problem = _type_problem(ctx, known[key], text)
        if problem is not None:
            raise click.BadParameter(f"{value}: key {raw_key!r} ({_flag(known[key])}): {problem}", ctx, param)
        if text is not None:
            values[key] = text
    ctx.default_map = {**(ctx.default_map or {}), **values}


def _flag(param: click.Parameter) -> str:
    return param.opts[0] if getattr(param, "opts", None) else str(param.name)


def _scalar_text(item: Any) -> str:
    """A YAML scalar as a user would type it on the command line."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float, str)):
        return str(item)
    if isinstance(item, (list, tuple, dict)):
        raise ValueError(f"{type(item).__name__} {item!r} where one value is expected")
    raise ValueError(f"{item!r} ({type(item).__name__}) is not a value this option takes")


def _as_command_line(param: click.Parameter, item: Any) -> str | list[str] | None:
    """The command-line text of a YAML value (a list of texts for options given several times); None
    for `null` where the option's default is unset (the key then means the default). ValueError says why
    a value cannot be one."""
    from asd.cli.options import CommaList

    if item is None:
        if param.default is None or param.multiple:
            return None
        raise ValueError(f"null is not a value; give one, or remove the key for the default ({param.default})")
    if param.multiple:
        items = item if isinstance(item, (list, tuple)) else [item]
        return [_scalar_text(v) for v in items]
    if isinstance(param.type, CommaList) and isinstance(item, (list, tuple)):
        return ",".join(_scalar_text(v) for v in item)
    return _scalar_text(item)


def _type_problem(ctx: click.Context, param: click.Parameter, text: str | list[str]) -> str | None:
    """What the option's click type says about the value, as on the command line (None when it takes it).
    Whether a path exists is left to the moment click uses the value: the command line may override it."""
    if isinstance(param.type, click.Path):
        return None
    for one in text if isinstance(text, list) else [text]:
        try:
            param.type.convert(one, param, ctx)
        except click.BadParameter as err:
            return err.message
    return None


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
