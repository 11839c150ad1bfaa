"""Option types and checks shared by every command; imports nothing heavy, so `--help` stays fast.

Every option is checked by click before a command does any work: ranges, choices, the device name, and
(`check_writable_dir`, `check_out_file`) the places a command will write to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from asd.errors import BadInput


def _registry_model_names() -> tuple[str, ...]:
    """The keys of asd.models.registry.MODELS, read from its source: importing it would import torch, and
    `--help` must not. The registry stays the one list of models (a new entry shows up here by itself)."""
    import ast

    tree = ast.parse((Path(__file__).parent.parent / "models" / "registry.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "MODELS":
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("asd/models/registry.py defines no literal MODELS dict")  # a bug: keeps its traceback


MODEL_NAMES = _registry_model_names()
# Kept literal so that `--help` needs no torch; tests/reliability/test_cli_faults.py checks it against
# asd.models.base.REDUCERS.
REDUCERS = ("mean", "max", "median", "p90")
THRESHOLD_METHODS = ("gamma", "percentile")
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class CommaList(click.ParamType):
    """`a,b,c` (or a YAML list) -> a tuple of non-empty names; the one parser of comma lists."""

    name = "a,b,..."

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        if isinstance(value, (list, tuple)):
            items = [str(v).strip() for v in value]
        elif value is None:
            return ()
        else:
            items = [v.strip() for v in str(value).split(",")]
        return tuple(v for v in items if v)


COMMA_LIST = CommaList()


class DeviceName(click.ParamType):
    """auto | cpu | cuda | cuda:N (whether a GPU is there is checked when the command starts)."""

    name = "device"
    pattern = re.compile(r"auto|cpu|cuda(:\d+)?")

    def convert(self, value, param, ctx) -> str:
        text = str(value).strip()
        if not self.pattern.fullmatch(text):
            self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N (N = GPU index)", param, ctx)
        return text

    def get_metavar(self, param, ctx=None) -> str:  # click 8.1 passes param only, 8.2 also ctx
        return "auto|cpu|cuda|cuda:N"


DEVICE = DeviceName()


class Jobs(click.ParamType):
    """Worker count: -1 = all cores, or a positive number."""

    name = "N"

    def convert(self, value, param, ctx) -> int:
        try:
            jobs = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number; use -1 (all cores) or N >= 1", param, ctx)
        if jobs == 0 or jobs < -1:
            self.fail(f"{jobs} is not allowed; use -1 (all cores) or N >= 1", param, ctx)
        return jobs


JOBS = Jobs()
SEED = click.IntRange(min=0)
EPOCHS = click.IntRange(min=1)
POSITIVE = click.FloatRange(min=0, min_open=True)
VAL_FRACTION = click.FloatRange(min=0, max=1, max_open=True)
PERCENTILE = click.FloatRange(min=0, max=100, min_open=True, max_open=True)


def check_writable_dir(path: Path, option: str) -> Path:
    """Make sure `path` is (or can become) a folder this process can write into; BadInput otherwise.

    Checked by writing and removing a probe file, which also catches read-only mounts and the root user
    on read-only file systems, where permission bits alone say nothing.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".asd-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BadInput(f"{option} {path} is not writable ({err.strerror or err}); choose another folder") from None
    return path


def check_out_file(path: Path, option: str) -> Path:
    """A file the command will write at the end: its folder must exist and be writable, and it must not be
    a folder itself. Checked first, so a long computation is never lost to a bad output path."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{option} {path} is a folder; give a file name, e.g. {path / 'scores.csv'}")
    if not path.parent.is_dir():
        raise BadInput(f"{option} {path}: folder {path.parent} does not exist; create it first")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"{option} {path} exists and is not writable")
    try:
        probe = path.parent / f".asd-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BadInput(f"{option} {path}: folder {path.parent} is not writable ({err.strerror or err})") from None
    return path
