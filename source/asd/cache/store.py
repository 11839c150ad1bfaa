"""The one owner of the processed folder (`data/processed/`): where each shard goes, and what is there.

    data/processed/
        <dataset>/<machine>/<split>.h5      one shard per dataset x machine type x split folder
        data_prep_summary.json              what the last data_prep run did
        data_prep_config.yaml               the options it ran with

A dataset name comes from the raw tree (`asd.dataset.layout.dataset_name`): `<name>`, or `<name>-eval` for
an official evaluation set. Shards straight under the processed folder (`<machine>/<split>.h5`) belong to
the dataset named after that folder. Shards at the layout of earlier versions
(`<name>/dev_data/raw/<machine>/`) are never read: they are reported, so old and new caches never mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asd.errors import PREP_COMMAND
from asd.walk import walk

SUMMARY_NAME = "data_prep_summary.json"
CONFIG_NAME = "data_prep_config.yaml"
_OLD_PART_FOLDERS = ("dev_data/raw", "eval_data/raw")


@dataclass(frozen=True)
class MachineData:
    """The shards of one machine type of one dataset."""

    dataset: str
    machine: str
    train: Path | None
    tests: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.machine}"


def shard_path(out_dir: str | Path, dataset: str, machine: str, split_folder: str) -> Path:
    """`<out_dir>/<dataset>/<machine>/<split>.h5` (dataset "." puts the machine folders straight below)."""
    return Path(out_dir) / dataset / machine / f"{split_folder}.h5"


def summary_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / SUMMARY_NAME


def prep_config_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CONFIG_NAME


def find_shards(folder: str | Path, machines: list[str] | None = None) -> list[Path]:
    """Every shard file below `folder` (temporary files are never matched), sorted; old layout included.
    Symbolic links to folders are followed (a linked dataset folder is found), each real folder once."""
    shards = sorted(p for p in walk(folder).files if p.suffix == ".h5" and not p.name.startswith("."))
    if machines:
        shards = [p for p in shards if p.parent.name in machines]
    return shards


def _dataset_folder(shard: Path, processed_dir: Path) -> str:
    return shard.parent.parent.relative_to(processed_dir).as_posix()


def _is_old_layout(dataset_folder: str) -> bool:
    return any(dataset_folder == part or dataset_folder.endswith("/" + part) for part in _OLD_PART_FOLDERS)


def dataset_of(shard: Path, processed_dir: str | Path) -> str:
    """The dataset a shard belongs to (the processed folder's own name for shards straight below it)."""
    processed_dir = Path(processed_dir)
    folder = _dataset_folder(Path(shard), processed_dir)
    return processed_dir.resolve().name if folder == "." else folder


def old_layout_folders(processed_dir: str | Path) -> list[Path]:
    """Folders holding shards at an earlier version's layout (`<name>/dev_data/raw/`), which are not read."""
    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        return []
    folders = {_dataset_folder(path, processed_dir) for path in find_shards(processed_dir)}
    return sorted(processed_dir / folder for folder in folders if _is_old_layout(folder))


def old_layout_note(processed_dir: str | Path) -> str:
    """One line about shards at an earlier layout under `processed_dir` ("" when there are none)."""
    folders = old_layout_folders(processed_dir)
    if not folders:
        return ""
    return (f"{', '.join(map(str, folders))} hold(s) shards of an earlier cache layout (<dataset>/dev_data/raw/...), "
            f"which are not read; rerun `{PREP_COMMAND}` (shards now go to <dataset>/<machine>/<split>.h5) and "
            "delete the old folder(s)")


def discover(processed_dir: str | Path, machines: list[str] | None = None) -> list[MachineData]:
    """Every machine type with shards below `processed_dir`, grouped by dataset (old layout left out)."""
    processed_dir = Path(processed_dir)
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for path in find_shards(processed_dir, machines):
        if _is_old_layout(_dataset_folder(path, processed_dir)):
            continue
        groups.setdefault((dataset_of(path, processed_dir), path.parent.name), {})[path.stem] = path
    found = []
    for (dataset, machine), shards in sorted(groups.items()):
        tests = tuple(p for split, p in sorted(shards.items()) if split != "train")
        found.append(MachineData(dataset, machine, shards.get("train"), tests))
    return found


def machine_data(processed_dir: str | Path, dataset: str, machine: str) -> MachineData | None:
    """The shards of one machine type of one dataset, or None when it has none."""
    for found in discover(processed_dir, [machine]):
        if found.dataset == dataset:
            return found
    return None
