"""DCASE Task 2 folder layouts and file names, 2020 to 2026, turned into one manifest table.

The file name is the ground truth for section, domain, label and attributes; folders give the split and
the machine type; `attributes_00.csv` is optional extra information that is only checked (SPEC §2).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from asd.walk import AUDIO_SUFFIXES, is_audio_name, walk

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Folder names that hold clips, and the split each one means. 2021 keeps its test sets per domain.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "test": "test",
    "source_test": "test",
    "target_test": "test",
    "supplemental": "supplemental",
}

DOMAINS = ("source", "target")  # recording conditions a DCASE name can give; "unknown" when it gives none

MANIFEST_COLUMNS = [
    "path", "rel_path", "file_name", "dataset", "machine", "split_folder", "split",
    "section", "domain", "label", "attributes", "clip_number", "style",
]

# 2021 and later: section_00_source_train_normal_0001_<attributes>.wav, with parts missing in eval sets
# (section_00_0001.wav in 2022-2024 eval, section_03_source_test_0000.wav in 2021 eval).
_SECTION_NAME = re.compile(
    r"^section_(?P<section>\d+)"
    r"(?:_(?P<domain>source|target))?"
    r"(?:_(?P<split>train|test))?"
    r"(?:_(?P<label>normal|anomaly))?"
    r"_(?P<number>\d+)"
    r"(?:_(?P<attributes>.*))?$"
)
# 2020: normal_id_00_00000000.wav (dev) and id_05_00000000.wav (eval, unlabelled).
_ID_NAME = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<section>\d+)_(?P<number>\d+)$")


@dataclass(frozen=True)
class ClipName:
    """What a DCASE file name says about its clip."""

    section: str
    domain: str  # source | target | unknown
    label: str  # normal | anomaly | unknown
    split: str | None  # train | test, when the name says it
    attributes: str  # "" when the name carries none; "noAttribute" kept as DCASE 2024 writes it
    clip_number: int
    style: str  # naming style: "2020" | "2021+" | "eval" (the manifest refines "2021+" to "2021" by folder)


class UnparseableName(ValueError):
    """A file name that follows none of the DCASE naming styles."""


def parse_clip_name(file_name: str) -> ClipName:
    """Parse a DCASE Task 2 file name (any year) into section, domain, label, split and attributes.

    2020 names have machine IDs instead of sections and no domains: the ID goes into `section` and the
    domain is "source" (2020 has one recording condition). Names without a label are eval clips:
    label "unknown" (and domain "unknown" when the name has none).
    """
    stem = Path(file_name).name
    if is_audio_name(stem):  # .wav or .flac, any case
        stem = stem[: -len(Path(stem).suffix)]
    match = _SECTION_NAME.match(stem)
    if match:
        parts = match.groupdict()
        labelled = parts["label"] is not None
        return ClipName(
            section=parts["section"].zfill(2),
            domain=parts["domain"] or "unknown",
            label=parts["label"] or "unknown",
            split=parts["split"],
            attributes=parts["attributes"] or "",
            clip_number=int(parts["number"]),
            style="2021+" if labelled else "eval",
        )
    match = _ID_NAME.match(stem)
    if match:
        parts = match.groupdict()
        return ClipName(
            section=parts["section"].zfill(2),
            domain="source",
            label=parts["label"] or "unknown",
            split=None,
            attributes="",
            clip_number=int(parts["number"]),
            style="2020",
        )
    raise UnparseableName(
        f"{file_name!r} is not a DCASE Task 2 name (expected e.g. "
        "'section_00_source_train_normal_0001_<attributes>.wav' or 'normal_id_00_00000000.wav')"
    )


def find_machine_dirs(raw_root: Path) -> list[Path]:
    """Every folder below `raw_root` that holds at least one split folder with audio files, sorted (symbolic
    links to folders followed, see `asd.walk`)."""
    return scan_tree(raw_root).machine_dirs


@dataclass
class RawTree:
    """What lies below a raw root: the machine folders, the audio files of each split folder, and every
    file or folder that will not be read, with the reason."""

    machine_dirs: list[Path]
    clips: dict[Path, list[Path]]  # split folder -> audio files directly inside it, sorted
    skipped: list[SkippedFile]


NOT_AUDIO = f"not an audio file: only {', '.join(AUDIO_SUFFIXES)} files (any case) are read"
NOT_IN_SPLIT = ("not directly inside a split folder (" + ", ".join(f"{name}/" for name in SPLIT_FOLDERS)
                + ") of a machine type folder: not read")


def scan_tree(raw_root: Path) -> RawTree:
    """Sort every file below `raw_root` into clips (audio files directly inside a split folder) and files
    that are skipped with the reason: a file in a split folder that is not audio, an audio file elsewhere,
    a broken symbolic link anywhere, a folder that cannot be read or is reached twice. Other files outside
    split folders (attribute tables, notes, download markers) are not clips and are not listed."""
    raw_root = Path(raw_root)
    tree = walk(raw_root)
    clips: dict[Path, list[Path]] = {}
    skipped = [SkippedFile(printable(_rel(path, raw_root)), reason) for path, reason in tree.unread]
    for path in tree.files:
        in_split = path.parent.name in SPLIT_FOLDERS and path.parent != raw_root
        if is_audio_name(path.name):
            if in_split:
                clips.setdefault(path.parent, []).append(path)
            else:
                skipped.append(SkippedFile(printable(_rel(path, raw_root)), NOT_IN_SPLIT))
        elif in_split:
            skipped.append(SkippedFile(printable(_rel(path, raw_root)), unusable_path(path) or NOT_AUDIO))
        elif path.is_symlink() and not path.exists():
            skipped.append(SkippedFile(printable(_rel(path, raw_root)), unusable_path(path) or "broken link"))
    for folder in tree.folders:  # e.g. a folder named like a clip: nothing to decode
        if folder.parent.name in SPLIT_FOLDERS and is_audio_name(folder.name):
            skipped.append(SkippedFile(printable(_rel(folder, raw_root)), "not a regular file (a folder)"))
    machine_dirs = sorted({folder.parent for folder in clips})
    return RawTree(machine_dirs, clips, skipped)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) and path != root else str(path)


# The official archives unpack to <dataset>/dev_data/raw/<machine>/ and <dataset>/eval_data/raw/<machine>/
# (`asd download`): those folders name a part of the dataset, not a dataset.
_PART_SUFFIXES = {"dev_data/raw": "", "eval_data/raw": "-eval"}


def dataset_name(raw_root: Path, machine_dir: Path) -> str:
    """The dataset a machine folder belongs to, as every table, page and cache path names it.

    `<name>/<machine>/` gives `<name>`; the official layout `<name>/dev_data/raw/<machine>/` gives `<name>` and
    `<name>/eval_data/raw/<machine>/` gives `<name>-eval` (so a year's development and evaluation sets never
    share a name). Machine folders straight under `raw_root` give "." (the name is then the folder the cache
    is read from); so does `raw_root` being a machine folder itself (a one-machine course dataset).
    """
    raw_root, machine_dir = Path(raw_root), Path(machine_dir)
    if machine_dir == raw_root:
        return "."
    parent = machine_dir.parent.relative_to(raw_root).as_posix()
    if parent == "raw" and raw_root.name + "/raw" in _PART_SUFFIXES:  # raw_root = <name>/dev_data
        return raw_root.parent.name + _PART_SUFFIXES[raw_root.name + "/raw"]
    for part, suffix in _PART_SUFFIXES.items():
        if parent == part:
            return raw_root.name + suffix
        if parent.endswith("/" + part):
            return parent[: -len(part) - 1] + suffix
    return parent


@dataclass(frozen=True)
class SkippedFile:
    """A file that was left out of a run, and why."""

    path: str
    reason: str


def printable(text: str) -> str:
    """A path as it can be printed and stored: bytes that are not UTF-8 shown as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unusable_path(path: Path) -> str | None:
    """Why a listed file cannot be a clip (name not UTF-8, broken link, not a regular file), or None."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (shards store names as UTF-8); rename the file"
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (points to {printable(os.readlink(path))}, which does not exist)"
        return "vanished while the folder was read"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def scan_raw_root(
    raw_root: Path, machines: list[str] | None = None
) -> tuple[pd.DataFrame, list[SkippedFile]]:
    """Build the manifest of every clip under `raw_root`: one row per parseable wav file.

    Returns the manifest (columns `MANIFEST_COLUMNS`, sorted by dataset, machine, split folder and file
    name) and the files that were skipped with the reason for each; an unparseable name never aborts.
    `dataset` is the machine folder's dataset name (see `dataset_name`).
    """
    import pandas as pd

    rows, skipped = scan_raw_records(raw_root, machines)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), skipped


def scan_raw_records(raw_root: Path, machines: list[str] | None = None) -> tuple[list[dict], list[SkippedFile]]:
    """`scan_raw_root` as plain records (dicts with the `MANIFEST_COLUMNS` keys, in the same order):
    data_prep's manifest, so its start-up needs no pandas."""
    raw_root = Path(raw_root).resolve()
    rows: list[dict] = []
    tree = scan_tree(raw_root)
    # With --machines, what lies in the other machine types' folders is not this run's business.
    skipped = [f for f in tree.skipped if not machines or set(machines) & set(PurePosixPath(f.path).parts)]
    for machine_dir in tree.machine_dirs:
        machine = machine_dir.name
        if machines and machine not in machines:
            continue
        dataset = dataset_name(raw_root, machine_dir)
        for split_folder, split in SPLIT_FOLDERS.items():
            for wav in tree.clips.get(machine_dir / split_folder, []):
                rel = wav.relative_to(raw_root).as_posix()
                problem = unusable_path(wav)
                if problem:
                    skipped.append(SkippedFile(printable(rel), problem))
                    continue
                try:
                    name = parse_clip_name(wav.name)
                except UnparseableName as err:
                    skipped.append(SkippedFile(rel, str(err)))
                    continue
                if name.split is not None and split in ("train", "test") and name.split != split:
                    log.warning("%s: name says split %r but it lies in %r; the folder wins",
                                rel, name.split, split_folder)
                style = "2021" if split_folder in ("source_test", "target_test") else name.style
                rows.append({
                    "path": str(wav), "rel_path": rel, "file_name": wav.name, "dataset": dataset,
                    "machine": machine, "split_folder": split_folder, "split": split,
                    "section": name.section, "domain": name.domain, "label": name.label,
                    "attributes": name.attributes, "clip_number": name.clip_number, "style": style,
                })
        check_attributes_csv(machine_dir, [r for r in rows if r["machine"] == machine
                                           and r["dataset"] == dataset])
    rows.sort(key=lambda row: (row["dataset"], row["machine"], row["split_folder"], row["file_name"]))
    skipped.sort(key=lambda f: f.path)
    return rows, skipped


def rules_for(manifest: pd.DataFrame) -> str:
    """The DCASE evaluation rules that fit a machine's clips: dcase2020, dcase2021 or dcase2022."""
    return _rules(set(manifest["style"]), set(manifest["split_folder"]))


def rules_for_files(file_names: list[str], split_folders: list[str]) -> str:
    """`rules_for` from clip file names and the split folders they came from (e.g. a shard's clip table)."""
    styles = set()
    for name in file_names:
        with contextlib.suppress(UnparseableName):
            styles.add(parse_clip_name(name).style)
    return _rules(styles, set(split_folders))


def _rules(styles: set[str], split_folders: set[str]) -> str:
    if "2020" in styles:
        return "dcase2020"
    if {"source_test", "target_test"} & split_folders:
        return "dcase2021"
    return "dcase2022"


def attributes_from_csv_row(row: dict) -> str:
    """Rebuild the file-name attribute string from an attributes CSV row (d1p, d1v, d2p, d2v, ...)."""
    pairs = []
    n = 1
    while f"d{n}p" in row:
        key, value = row[f"d{n}p"], row.get(f"d{n}v")
        if isinstance(key, str) and key:
            pairs.append(f"{key}_{value}")
        n += 1
    return "_".join(pairs)


def check_attributes_csv(machine_dir: Path, rows: list[dict]) -> list[str]:
    """Compare `attributes_*.csv` with the attribute strings in the file names; warn on mismatches.

    The CSV is optional and known to be broken in some downloads, so every problem is a warning
    (returned and logged), never an error.
    """
    problems: list[str] = []
    by_name = {r["file_name"]: r["attributes"] for r in rows}
    for csv_path in sorted(machine_dir.glob("attributes_*.csv")):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                if "file_name" not in (reader.fieldnames or []):
                    raise ValueError("no 'file_name' column")
                table = list(reader)
        except Exception as err:  # any parse failure: the names still carry the attributes
            problems.append(f"{csv_path}: unreadable ({err}); using the attributes in the file names")
            continue
        mismatched = 0
        for csv_row in table:
            name = Path(str(csv_row["file_name"])).name
            if name not in by_name:
                continue
            from_csv = attributes_from_csv_row(csv_row)
            if from_csv and by_name[name] not in ("", "noAttribute") and from_csv != by_name[name]:
                mismatched += 1
        if mismatched:
            problems.append(f"{csv_path}: {mismatched} rows disagree with their file names; "
                            "the file names win")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems
