"""Option types, checks and the error policy shared by every command; imports nothing heavy (the model
names and reducers come from the registry, a plain table), so `--help` stays fast.

Every option is checked by click before a command does any work: ranges (floats must be finite: nan and
infinity are refused), choices, the device name, and (`asd.folders.check_writable_dir` and
`check_out_file`) the places a command will write to. A `--config` file's values go through the same
types (`asd.cli.config_file`).
"""

from __future__ import annotations

import functools
import math
import re
import sys

import click

from asd.errors import AsdError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def fail_cleanly(func):
    """The one error policy of the command line: the project's own errors (AsdError) become one line on
    stderr and exit status 2; any other exception is a bug and keeps its traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AsdError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
    return wrapper


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
        if jobs == 0 or jobs < -1 or jobs > 4096:
            self.fail(f"{jobs} is not allowed; use -1 (all cores) or 1 <= N <= 4096", param, ctx)
        return jobs


JOBS = Jobs()


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses nan and infinity: every comparison with nan is false, so a plain
    `click.FloatRange` lets `nan` through whatever its bounds, and `inf` passes any open upper end."""

    def convert(self, value, param, ctx) -> float:
        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number (nan and infinity are refused)", param, ctx)
        return super().convert(number, param, ctx)


def finite_range(low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> FiniteFloatRange:
    """The float type of every float option: a range of finite numbers."""
    return FiniteFloatRange(min=low, max=high, min_open=low_open, max_open=high_open)


class BoundedInt(click.IntRange):
    """A whole number from `min` up, refused above `limit` with a message of its own (the range shown in
    `--help` and in other errors stays `x>=min`)."""

    def __init__(self, min: int, limit: int, why: str) -> None:  # noqa: A002 - click's own argument name
        super().__init__(min=min)
        self.limit, self.why = limit, why

    def convert(self, value, param, ctx) -> int:
        number = super().convert(value, param, ctx)
        if number > self.limit:
            self.fail(f"{number} is larger than {self.limit} ({self.why})", param, ctx)
        return number


# Every seed ends in numpy, whose generators take 0 <= seed < 2**32; a larger one is refused here rather
# than by numpy after the run folder exists.
SEED_LIMIT = 2**32 - 1
SEED = BoundedInt(0, SEED_LIMIT, "seeds are below 2**32")
# Counts that reach C code (torch, joblib) or loops: bounded so a typo is an error, not an overflow or a
# run that never ends.
EPOCHS = BoundedInt(1, 1_000_000, "the most this option takes")
PATIENCE = BoundedInt(1, 1_000_000, "the most this option takes")
THREADS = BoundedInt(0, 4096, "the most this option takes")
POSITIVE = finite_range(low=0, low_open=True)
VAL_FRACTION = finite_range(low=0, high=1, high_open=True)
PERCENTILE = finite_range(low=0, high=100, low_open=True, high_open=True)
