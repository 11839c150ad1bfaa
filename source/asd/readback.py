"""Reading back the files a run wrote (JSON records and CSV tables), validated on the way in.

A file read back may not be what was written: cut short by a full disk or a killed copy, replaced by a
binary file or a table in another format, or written by another version of the project with other
columns. Each reader here checks what it reads and raises `DamagedFile` with one line that names the file,
says what is wrong, and how to get a good one back, instead of a parser's traceback or a wrong figure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asd.errors import DamagedFile

if TYPE_CHECKING:
    import pandas as pd

# Column kinds a table declares: "name" (text, never empty), "text" (text, may be empty), "number" (a
# number in every row), "number?" (a number, empty or "nan"), "flag" (0 or 1 in every row).
KINDS = ("name", "text", "number", "number?", "flag")


def damaged(path: str | Path, what: str, reason: str, fix: str) -> DamagedFile:
    """The one message: which file, that it is not (or no longer) the `what` it should be, why, the fix."""
    return DamagedFile(f"{path} is damaged or is not {what} ({reason}); {fix}")


def read_text(path: str | Path, what: str, fix: str) -> str:
    """A file's text: refused when it is not UTF-8 text (a binary file) or cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise damaged(path, what, f"unreadable: {err.strerror or err}", fix) from None
    if b"\0" in data:
        raise damaged(path, what, "a binary file, not text", fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, what, f"not UTF-8 text (byte {err.start})", fix) from None


def read_json_object(path: str | Path, what: str, fix: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON file holding one object with the `required` keys (a truncated file fails to parse)."""
    text = read_text(path, what, fix)
    try:
        record = json.loads(text)
    except ValueError as err:
        reason = "empty" if not text.strip() else f"not valid JSON: {getattr(err, 'msg', err)} at line " \
                                                   f"{getattr(err, 'lineno', '?')}"
        raise damaged(path, what, reason, fix) from None
    if not isinstance(record, dict):
        raise damaged(path, what, f"it holds a JSON {type(record).__name__}, not an object", fix)
    missing = [key for key in required if key not in record]
    if missing:
        raise damaged(path, what, f"no {', '.join(map(repr, missing))} in it (written by another version?)", fix)
    return record


def read_table(path: str | Path, what: str, fix: str, columns: Mapping[str, str],
               optional: Mapping[str, str] | None = None, whole_lines: bool = True) -> pd.DataFrame:
    """A CSV table with a header, checked column by column.

    `columns` must all be there, `optional` ones may be missing (older files), each with its kind (see
    `KINDS`); any other column is read as text. `whole_lines`: the file must end with a line end, as
    every table the project writes does, so a file cut short in a row is refused (a cut at a row's end
    leaves a valid shorter table, which no reader of a plain CSV can tell). Values are returned typed:
    text as str ("" for empty), numbers as float, flags as int."""
    import pandas as pd

    text = read_text(path, what, fix)
    if not text.strip():
        raise damaged(path, what, "empty", fix)
    if whole_lines and not text.endswith("\n"):
        raise damaged(path, what, "its last line is cut short (truncated)", fix)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise damaged(path, what, f"not a CSV table: {reason}", fix) from None
    kinds = {**(optional or {}), **columns}
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise damaged(path, what, f"no column {', '.join(map(repr, missing))} (written by another version, or "
                                  "another table)", fix)
    for name, kind in kinds.items():
        if name in table.columns:
            table[name] = _typed(table[name], kind, lambda row, value, why, name=name: damaged(
                path, what, f"row {row + 2}, column {name!r}: {value!r} is {why}", fix))
    return table


def _typed(values: pd.Series, kind: str, fail) -> pd.Series:
    """One column as its kind; `fail(row, value, why)` gives the error for the first bad value."""
    import pandas as pd

    if kind not in KINDS:
        raise ValueError(f"unknown column kind {kind!r}")
    if kind == "text":
        return values
    empty = values.str.strip() == ""
    if kind == "number?":  # an undefined figure (an AUC without anomalies) is written as "nan"
        empty |= values.str.strip().str.lower() == "nan"
    if kind == "name":
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise fail(row, "", "empty")
        return values
    numbers = pd.to_numeric(values.where(~empty, ""), errors="coerce")
    bad = numbers.isna() & ~empty
    if kind in ("number", "flag"):
        bad |= empty
    if kind == "flag":
        bad |= ~numbers.isin([0, 1]) & ~empty
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        why = {"flag": "not 0 or 1", "number": "not a number"}.get(kind, "not a number")
        raise fail(row, values.iloc[row], why)
    return numbers.astype(int) if kind == "flag" else numbers.astype(float)


def parse_flag(text: str) -> int | None:
    """A 0/1 value as tools write it: "0"/"1", "0.0"/"1.0" (a float column), "False"/"True" (a boolean
    column, any case). None for anything else ("2", "0.5", "yes", "", "nan"): ambiguous, so refused."""
    value = str(text).strip().lower()
    if value in ("true", "false"):
        return int(value == "true")
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None
