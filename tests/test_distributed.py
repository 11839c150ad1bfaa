"""Dask is a way to execute the stages, nothing more: a LocalCluster of 2 worker processes gives the same
shards, the same run folder (the same file names, report.html and config.yaml included) and the same
scores as a run in one process, refuses the same bad input with the same one-line message, and finishes
only what is missing when rerun after a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import StaleShard
from asd.cache.store import find_shards
from asd.cli import main
from asd.cli.prep import prep_command
from asd.engine.distributed import DaskExecutor, check_scheduler
from asd.errors import BadInput
from conftest import run_script


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_scheduler_spec_is_checked_before_any_work():
    assert check_scheduler("local") == "local" and check_scheduler("tcp://10.0.0.5:8786")
    for bad in ("local:0", "lokal", "http//x"):
        with pytest.raises(BadInput, match="expected local, local:N"):
            check_scheduler(bad)
    result = CliRunner().invoke(main, ["--scheduler", "local:x"])
    assert result.exit_code == 2 and "expected local, local:N" in result.output


def test_distributed_prep_writes_the_same_shards(synth_set, cluster, tmp_path):
    out = tmp_path / "dist"
    cfg = PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(out))
    single_root = synth_set["processed"].parent
    with DaskExecutor(cluster, log=lambda line: None) as executor:
        summary = run_prep(cfg, show_progress=False, executor=executor)
        single = find_shards(single_root)
        assert len(summary.shards_written) == len(single) == 4 and not summary.files_skipped
        for path in single:
            other = out / path.relative_to(single_root)
            mine, theirs = _datasets(path), _datasets(other)
            assert mine.keys() == theirs.keys() and {"waveform", "logmel"} <= set(mine)
            for name in mine:
                assert np.array_equal(mine[name], theirs[name]), f"{other}:{name}"
        assert not list(out.rglob("*.partial"))
        again = run_prep(cfg, show_progress=False, executor=executor)
        assert not again.shards_written and len(again.shards_skipped) == 4
        with pytest.raises(StaleShard, match="other settings"):  # refused on the client, before any task
            run_prep(PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(out), features=FeatureConfig(n_mels=64)),
                     show_progress=False, executor=executor)


def test_data_prep_command_with_a_scheduler_address(synth_set, cluster, tmp_path):
    result = CliRunner().invoke(prep_command, ["--raw-dir", str(synth_set["raw"]), "--out-dir", str(tmp_path / "cli"),
                                               "--machines", "fan", "--scheduler", cluster])
    assert result.exit_code == 0, result.output
    assert "2 shard(s) on 2 worker(s)" in result.output and "shards written 2" in result.output


def test_bad_input_gives_the_same_one_line_error_with_and_without_a_scheduler(tmp_path):
    (tmp_path / "empty").mkdir()
    alone = run_script("data_prep.py", "--raw-dir", tmp_path / "empty")
    dask = run_script("data_prep.py", "--raw-dir", tmp_path / "empty", "--scheduler", "local:1")
    assert alone.returncode == dask.returncode == 2
    assert dask.stderr == alone.stderr and alone.stderr.startswith("error: no DCASE-style clips")
    assert len(alone.stderr.strip().splitlines()) == 1 and "Traceback" not in dask.stderr


def test_a_scheduler_run_writes_the_same_run_folder_as_a_local_run(synth_set, default_run, cluster, tmp_path):
    local = default_run[0]
    dist = tmp_path / "dist"
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(synth_set["processed"]), "--output-dir",
                                       str(dist), "--scheduler", cluster])
    assert result.exit_code == 0, result.output
    assert "2 machine type(s) on 2 worker(s)" in result.output
    assert _files(dist) == _files(local)  # report.html, config.yaml, task.json ... every name
    assert {"report.html", "config.yaml", "config.json", "predictions.csv"} <= set(_files(dist))
    for name in ("predictions.csv", "thresholds.csv", "synth/summary.csv", "synth/official_score.csv",
                 *(f"synth/submission/{p.name}" for p in (local / "synth" / "submission").iterdir())):
        assert (dist / name).read_bytes() == (local / name).read_bytes(), name


def test_a_failed_task_leaves_the_others_and_a_rerun_finishes_only_what_is_missing(synth_set, default_run, cluster,
                                                                                   tmp_path):
    broken = tmp_path / "broken" / "synth"
    shutil.copytree(synth_set["processed"], broken)
    (broken / "valve" / "train.h5").write_bytes(b"not an hdf5 file")
    dist = tmp_path / "run"
    options = ["--processed-dir", str(broken), "--output-dir", str(dist), "--scheduler", cluster, "--seeds", "0,1"]
    result = CliRunner().invoke(main, options)
    assert result.exit_code == 1
    assert "error: synth/valve (seed 0): train failed: shard" in result.stderr and "is damaged" in result.stderr
    assert (dist / "seed_0" / "synth" / "fan" / "model.pt").exists()
    assert (dist / "seed_0" / "synth" / "submission" / "anomaly_score_fan_section_00_test.csv").exists()

    # Repaired and rerun: only the missing machine type is trained.
    shutil.copy(synth_set["processed"] / "valve" / "train.h5", broken / "valve" / "train.h5")
    result = CliRunner().invoke(main, options)
    assert result.exit_code == 0, result.output
    assert result.output.count("(model already saved)") == 2  # fan, seeds 0 and 1
    assert "official score of synth over seeds 0, 1:" in result.output

    seed0 = dist / "seed_0"
    for name in ("predictions.csv", "thresholds.csv", "synth/official_score.csv"):
        assert (seed0 / name).read_bytes() == (default_run[0] / name).read_bytes(), name
    other_seed = pd.read_csv(dist / "seed_1" / "predictions.csv")
    assert not np.array_equal(other_seed["score"], pd.read_csv(default_run[0] / "predictions.csv")["score"])


def test_model_options_and_the_shared_network_under_a_scheduler(synth_set, cluster, tmp_path):
    from asd.models.checkpoint import load_detector

    run_dir = tmp_path / "embed"
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(synth_set["processed"]), "--output-dir",
                                       str(run_dir), "--model", "embed", "--epochs", "1", "--scheduler", cluster,
                                       "--model-option", "crop_frames=32", "--model-option", "crops_per_clip=1"])
    assert result.exit_code == 0, result.output
    assert "1 shared network(s) on 2 worker(s)" in result.output
    assert "synth: one network for its machine types" in result.output
    assert "one network for fan, valve" in (run_dir / "synth" / "shared_train.log").read_text()
    for machine in ("fan", "valve"):
        assert load_detector(run_dir / "synth" / machine / "model.pt").config.crop_frames == 32
        assert "trained for the whole dataset" in (run_dir / "synth" / machine / "train.log").read_text()
    assert (run_dir / "report.html").is_file() and (run_dir / "config.yaml").is_file()
