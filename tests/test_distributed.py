"""Dask: a LocalCluster of 2 worker processes gives the same shards and the same scores as one machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import StaleShard, find_shards
from asd.cli import main
from asd.cli.prep import prep_command
from asd.dataset.synth import generate_dataset
from asd.engine.distributed import check_scheduler, run_prep_distributed

MACHINES = ["fan", "valve"]


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dist")
    generate_dataset(base / "raw" / "synth", seed=5, scale=0.03, machines=MACHINES, clip_seconds=2.0,
                     anomaly_strength=4.0, n_jobs=1)
    run_prep(PrepConfig(raw_dir=str(base / "raw"), out_dir=str(base / "single"), jobs=1), show_progress=False)
    return {"base": base, "raw": base / "raw", "single": base / "single"}


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_scheduler_spec_is_checked_before_any_work():
    assert check_scheduler("local") == "local" and check_scheduler("tcp://10.0.0.5:8786")
    for bad in ("local:0", "lokal", "http//x"):
        with pytest.raises(ValueError, match="expected local, local:N"):
            check_scheduler(bad)
    result = CliRunner().invoke(main, ["--scheduler", "local:x"])
    assert result.exit_code == 2 and "expected local, local:N" in result.output


def test_distributed_prep_writes_the_same_shards(data, cluster):
    out = data["base"] / "dist"
    cfg = PrepConfig(raw_dir=str(data["raw"]), out_dir=str(out))
    summary = run_prep_distributed(cfg, cluster, log=lambda line: None)
    single = find_shards(data["single"])
    assert len(summary.shards_written) == len(single) == 4 and not summary.files_skipped
    for path in single:
        other = out / path.relative_to(data["single"])
        mine, theirs = _datasets(path), _datasets(other)
        assert mine.keys() == theirs.keys() and {"waveform", "logmel"} <= set(mine)
        for name in mine:
            assert np.array_equal(mine[name], theirs[name]), f"{other}:{name}"
    assert not list(out.rglob("*.partial"))
    again = run_prep_distributed(cfg, cluster, log=lambda line: None)
    assert not again.shards_written and len(again.shards_skipped) == 4
    with pytest.raises(StaleShard, match="other settings"):  # refused on the client, before any task
        run_prep_distributed(PrepConfig(raw_dir=str(data["raw"]), out_dir=str(out),
                                        features=FeatureConfig(n_mels=64)), cluster)


def test_data_prep_command_with_a_scheduler_address(data, cluster):
    result = CliRunner().invoke(prep_command, ["--raw-dir", str(data["raw"]), "--out-dir",
                                               str(data["base"] / "cli"), "--machines", "fan",
                                               "--scheduler", cluster])
    assert result.exit_code == 0, result.output
    assert "2 shard(s) on 2 worker(s)" in result.output and "shards written 2" in result.output


def test_distributed_run_gives_the_single_machine_scores_and_survives_a_failed_task(data, cluster):
    runner = CliRunner()
    processed = data["single"] / "synth"
    common = ["--processed-dir", str(processed), "--epochs", "1", "--model", "ae"]
    single = data["base"] / "run_single"
    # Dask workers run torch with one thread (threads_per_worker=1); float sums, and so the trained
    # weights, depend on the thread count, so the single-machine reference uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert runner.invoke(main, ["run", *common, "--output-dir", str(single)]).exit_code == 0
    finally:
        torch.set_num_threads(threads)

    # A machine type whose training shard is broken fails alone; the other one's results are written.
    broken = data["base"] / "broken" / "synth"
    shutil.copytree(processed, broken)
    (broken / "valve" / "train.h5").write_bytes(b"not an hdf5 file")
    dist = data["base"] / "run_dist"
    options = ["--processed-dir", str(broken), "--epochs", "1", "--model", "ae", "--output-dir", str(dist),
               "--scheduler", cluster, "--seeds", "0,1"]
    result = runner.invoke(main, options)
    assert result.exit_code == 1
    assert "2 task(s) failed" in result.output and "synth/valve (seed 0)" in result.output
    assert (dist / "seed_0" / "synth" / "fan" / "model.pt").exists()
    assert (dist / "seed_0" / "synth" / "submission" / "anomaly_score_fan_section_00_test.csv").exists()

    # Repaired and rerun: only the missing machine type is trained.
    shutil.copy(processed / "valve" / "train.h5", broken / "valve" / "train.h5")
    result = runner.invoke(main, options)
    assert result.exit_code == 0, result.output
    assert result.output.count("(model already saved)") == 2  # fan, seeds 0 and 1

    seed0 = dist / "seed_0"
    for name in ("predictions.csv", "thresholds.csv"):
        ours, theirs = pd.read_csv(seed0 / name), pd.read_csv(single / name)
        assert ours.equals(theirs), name
    assert (seed0 / "synth" / "official_score.csv").read_text() == \
        (single / "synth" / "official_score.csv").read_text()
    for path in (single / "synth" / "submission").glob("*.csv"):
        assert (seed0 / "synth" / "submission" / path.name).read_text() == path.read_text()
    other_seed = pd.read_csv(dist / "seed_1" / "predictions.csv")
    assert not np.array_equal(other_seed["score"], pd.read_csv(single / "predictions.csv")["score"])
