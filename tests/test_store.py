"""The processed folder as `asd.cache.store` lays it out: dataset names a user knows, shards at
`<dataset>/<machine>/<split>.h5` as the README draws them, and caches of the earlier layout reported,
never read and never mixed with new ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.store import dataset_of, discover, old_layout_folders, shard_path
from asd.cli import main
from conftest import build_dataset


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory) -> dict[str, Path]:
    """A year's development and evaluation sets as `asd download` unpacks them, prepared."""
    base = tmp_path_factory.mktemp("official")
    raw = base / "raw"
    build_dataset(raw / "dcase2023t2" / "dev_data" / "raw", {"fan": (10, 2)}, seconds=1.0)
    build_dataset(raw / "dcase2023t2" / "eval_data" / "raw", {"fan": (10, 2)}, seconds=1.0)
    run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(base / "processed"), jobs=1), show_progress=False)
    return {"raw": raw, "processed": base / "processed"}


def test_shards_land_at_dataset_machine_split(official_layout) -> None:
    processed = official_layout["processed"]
    for dataset in ("dcase2023t2", "dcase2023t2-eval"):  # dev and eval of one year never collide
        for split in ("train", "test"):
            assert shard_path(processed, dataset, "fan", split) == processed / dataset / "fan" / f"{split}.h5"
            assert (processed / dataset / "fan" / f"{split}.h5").is_file()
    assert not (processed / "dcase2023t2" / "dev_data").exists()
    assert [m.key for m in discover(processed)] == ["dcase2023t2/fan", "dcase2023t2-eval/fan"]


def test_a_dataset_folder_itself_is_named_after_it(official_layout) -> None:
    one = official_layout["processed"] / "dcase2023t2"
    assert [m.key for m in discover(one)] == ["dcase2023t2/fan"]
    assert dataset_of(one / "fan" / "train.h5", one) == "dcase2023t2"


def test_a_cache_of_the_earlier_layout_is_reported_and_never_read(official_layout, tmp_path) -> None:
    processed = tmp_path / "processed"
    old = processed / "dcase2023t2" / "dev_data" / "raw" / "fan"
    shutil.copytree(official_layout["processed"] / "dcase2023t2" / "fan", old)
    assert discover(processed) == []
    assert old_layout_folders(processed) == [processed / "dcase2023t2" / "dev_data" / "raw"]
    result = CliRunner().invoke(main, ["train", "--processed-dir", str(processed), "--output-dir",
                                       str(tmp_path / "r")])
    assert result.exit_code == 2 and "earlier cache layout" in result.stderr
    assert "`.venv/bin/python source/data_prep.py`" in result.stderr and not (tmp_path / "r").exists()

    # data_prep writes the new layout beside it, says so, and a run reads only the new shards
    summary = run_prep(PrepConfig(raw_dir=str(official_layout["raw"]), out_dir=str(processed), jobs=1),
                       show_progress=False)
    assert any("earlier cache layout" in line for line in summary.lines())
    assert [m.key for m in discover(processed)] == ["dcase2023t2/fan", "dcase2023t2-eval/fan"]
    result = CliRunner().invoke(main, ["train", "--processed-dir", str(processed), "--output-dir",
                                       str(tmp_path / "r"), "--machines", "fan"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "earlier cache layout" in result.stderr
    assert sorted(p.parent.name for p in (tmp_path / "r").rglob("model.pt")) == ["fan", "fan"]
    assert not (tmp_path / "r" / "dcase2023t2" / "dev_data").exists()
