"""Faults met through `python source/main.py` (and data_prep's options): each case builds the bad input,
runs the real command, and checks the exit status, the message (names the file or option and the
reason), what was written, and that the good outputs equal those of a clean run.

Exit statuses: 2 = bad input or bad state (one line, nothing done), 1 = some machine types failed (the
others are done), 0 = all done. A bug keeps its traceback.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import PROJECT_ROOT, build_dataset

MAIN = str(PROJECT_ROOT / "source" / "main.py")
DATA_PREP = str(PROJECT_ROOT / "source" / "data_prep.py")
FAST = ["--model", "ae", "--epochs", "1"]


def run(*args: str, cwd: Path = PROJECT_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def predictions(run_dir: Path, machine: str | None = None) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "predictions.csv")
    table = table if machine is None else table[table["machine"] == machine]
    return table.sort_values("file_name").reset_index(drop=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Two machine types of tiny clips, prepped; a clean `run` of both as the reference."""
    base = tmp_path_factory.mktemp("cli_faults")
    build_dataset(base / "raw" / "ds", {"fan": (8, 4), "valve": (8, 4)}, seconds=2.0)
    done = run(DATA_PREP, "--raw-dir", str(base / "raw"), "--out-dir", str(base / "processed"), "--jobs", "1",
               "--quiet")
    assert done.returncode == 0, done.stderr
    processed = base / "processed" / "ds"
    clean = base / "clean"
    done = run(MAIN, "run", "--processed-dir", str(processed), "--output-dir", str(clean), *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"base": base, "processed": processed, "clean": clean}


def copy_processed(data: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the prepped dataset (same dataset name, so its outputs compare with the clean run's)."""
    dest = tmp_path / "copy" / data["processed"].name
    shutil.copytree(data["processed"], dest)
    return dest


# --- options are checked before any work -----------------------------------------------------------------

@pytest.mark.parametrize(("args", "option", "allowed"), [
    (["--epochs", "0"], "--epochs", "x>=1"),
    (["--epochs", "-3"], "--epochs", "x>=1"),
    (["--threshold-percentile", "150"], "--threshold-percentile", "0<x<100"),
    (["--threshold-percentile", "0"], "--threshold-percentile", "0<x<100"),
    (["--val-fraction", "1"], "--val-fraction", "0<=x<1"),
    (["--val-fraction", "-0.1"], "--val-fraction", "0<=x<1"),
    (["--seed", "-1"], "--seed", "x>=0"),
    (["--device", "gpu"], "--device", "auto, cpu, cuda or cuda:N"),
    (["--model", "resnet"], "--model", "'ae', 'ae-maha', 'embed'"),
    (["--aggregate", "sum"], "--aggregate", "'mean', 'max', 'median', 'p90'"),
    (["--model-option", "colour=red"], "--model-option", "FIELD one of"),
    (["--model", "embed", "--model-option", "n_networks=1"], "--model-option", "n_networks must be >= 2"),
    (["--model", "embed", "--model-option", "n_networks=two"], "--model-option", "n_networks=two"),
    (["--model", "gmm", "--members", "gmm,ae"], "--members", "--model ensemble"),
])
def test_bad_option_is_refused_before_any_work(tmp_path, args, option, allowed) -> None:
    from asd.cli import main

    out = tmp_path / "run"
    done = CliRunner().invoke(main, ["train", "--processed-dir", str(tmp_path / "nothing-here"), "--output-dir",
                                     str(out), *args])
    assert done.exit_code == 2
    assert option in done.stderr and allowed in done.stderr, done.stderr
    assert not out.exists()  # nothing written


def test_bad_option_through_the_entry_script(tmp_path) -> None:
    out = tmp_path / "run"
    done = run(MAIN, "train", "--processed-dir", str(tmp_path / "nothing-here"), "--output-dir", str(out),
               "--model-option", "colour=red")
    assert done.returncode == 2 and done.stderr.startswith("error: --model-option 'colour=red'"), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_unknown_machine_names_the_machines_found(data, tmp_path) -> None:
    done = run(MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(tmp_path / "r"),
               "--machines", "fan,pump", *FAST)
    assert done.returncode == 2
    assert "--machines: no shards for pump" in done.stderr and "found: fan, valve" in done.stderr
    assert not (tmp_path / "r").exists()


def test_cuda_without_gpu_is_one_line(data, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    done = run(MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(tmp_path / "r"),
               "--device", "cuda", *FAST)
    assert done.returncode == 2 and done.stderr.startswith("error: --device cuda") and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_prep_option_and_config_key_errors(tmp_path) -> None:
    bad = tmp_path / "prep.yaml"
    bad.write_text("raw_dir: somewhere\njobz: 2\n")
    done = run(DATA_PREP, "--config", str(bad))
    assert done.returncode == 2 and "unknown key 'jobz'" in done.stderr and "jobs" in done.stderr
    done = run(MAIN, "synth", "--out", str(tmp_path / "s"), "--scale", "0")
    assert done.returncode == 2 and "--scale" in done.stderr and "x>0" in done.stderr
    assert not (tmp_path / "s").exists()


# --- the config file ------------------------------------------------------------------------------------

def test_config_file_unknown_key_and_bad_value(data, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"processed_dir: {data['processed']}\nepochz: 3\n")
    done = run(MAIN, "train", "--config", str(config), "--output-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and "unknown key 'epochz'" in done.stderr and "epochs" in done.stderr
    config.write_text(f"processed_dir: {data['processed']}\nepochs: 0\n")
    done = run(MAIN, "train", "--config", str(config), "--output-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and "--epochs" in done.stderr and "x>=1" in done.stderr
    # the command line overrides the file: the error names the folder given on the command line
    config.write_text("processed_dir: /nonexistent\nepochs: 2\n")
    done = run(MAIN, "train", "--config", str(config), "--processed-dir", str(data["processed"]),
               "--machines", "pump", "--output-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and f"no shards for pump under {data['processed']}" in done.stderr
    assert not (tmp_path / "r").exists()


def test_config_round_trip_repeats_the_run(data, tmp_path) -> None:
    import yaml

    written = data["clean"] / "config.yaml"
    settings = yaml.safe_load(written.read_text())
    assert settings["epochs"] == 1 and settings["model"] == "ae" and "output_dir" not in settings
    assert settings["machines"] == [] and settings["processed_dir"] == str(data["processed"])
    done = run(MAIN, "run", "--config", str(written), "--output-dir", str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr[-2000:]
    pd.testing.assert_frame_equal(predictions(tmp_path / "again"), predictions(data["clean"]))
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text()) == settings


def test_config_json_records_what_was_used(data) -> None:
    import json

    config = json.loads((data["clean"] / "config.json").read_text())
    assert config["run"]["fit"]["epochs"] == 1 and config["used"] == {"epochs": 1, "device": "cpu"}
    assert config["trained"] == ["ds/fan", "ds/valve"] and config["failed"] == {}


# --- one bad machine type never stops the others -------------------------------------------------------

def test_machine_without_training_clips_is_skipped(data, tmp_path) -> None:
    processed = copy_processed(data, tmp_path)
    (processed / "fan" / "train.h5").unlink()  # fan has test clips but no training clips
    out = tmp_path / "run"
    done = run(MAIN, "run", "--processed-dir", str(processed), "--output-dir", str(out), *FAST)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: ds/fan: train failed: no train.h5 shard" in done.stderr
    assert "FAILED: 1 machine type(s); done: 1 (ds/valve)" in done.stdout
    assert "ds/fan: train: no train.h5 shard" in (out / "summary.txt").read_text()
    thresholds = pd.read_csv(out / "thresholds.csv")
    assert set(thresholds["machine"]) == {"valve"}
    clean = pd.read_csv(data["clean"] / "thresholds.csv")
    pd.testing.assert_frame_equal(thresholds, clean[clean["machine"] == "valve"].reset_index(drop=True))
    pd.testing.assert_frame_equal(predictions(out), predictions(data["clean"], "valve"))
    assert not (out / "ds" / "fan" / "model.pt").exists()


def test_damaged_shard_names_it_and_the_fix(data, tmp_path) -> None:
    processed = copy_processed(data, tmp_path)
    shard = processed / "fan" / "train.h5"
    with open(shard, "r+b") as file:
        file.truncate(shard.stat().st_size // 2)
    out = tmp_path / "run"
    done = run(MAIN, "train", "--processed-dir", str(processed), "--output-dir", str(out), *FAST)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"shard {shard} is damaged" in done.stderr
    assert "`.venv/bin/python source/data_prep.py` rebuilds it" in done.stderr
    assert "Traceback" not in done.stderr
    clean = pd.read_csv(data["clean"] / "thresholds.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "thresholds.csv"),
                                  clean[clean["machine"] == "valve"].reset_index(drop=True))
    assert not (out / "ds" / "fan" / "model.pt").exists()


def test_damaged_model_in_test_is_a_message(data, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(data["clean"], out)
    model = out / "ds" / "fan" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncated
    done = run(MAIN, "test", "--run", str(out))
    assert done.returncode == 1
    assert f"{model} is damaged or is not a model saved by this project" in done.stderr
    assert "weights_only" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    pd.testing.assert_frame_equal(predictions(out), predictions(data["clean"], "valve"))


def test_test_stage_claims_only_files_that_exist(data, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(data["clean"], out)
    (out / "thresholds.csv").unlink()
    done = run(MAIN, "test", "--run", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    claim = [line for line in done.stdout.splitlines() if line.startswith("outputs in")]
    assert claim and "thresholds.csv" not in claim[0] and "predictions.csv" in claim[0]


# --- score: the model and where the scores go ------------------------------------------------------------

def test_score_missing_and_non_torch_model(data, tmp_path) -> None:
    wav = next((data["base"] / "raw" / "ds" / "fan" / "test").glob("*.wav"))
    done = run(MAIN, "score", "--run", str(data["clean"]), "--machine", "pump", str(wav))
    assert done.returncode == 2 and "no trained model for machine type 'pump'" in done.stderr
    out = tmp_path / "run"
    shutil.copytree(data["clean"], out)
    model = out / "ds" / "fan" / "model.pt"
    model.write_text("this is not a checkpoint\n")
    done = run(MAIN, "score", "--run", str(out), "--machine", "fan", "--out", str(tmp_path / "s.csv"), str(wav))
    assert done.returncode == 2 and f"{model} is damaged" in done.stderr
    assert "weights_only" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_score_out_is_checked_before_scoring(data, tmp_path, where) -> None:
    wav = next((data["base"] / "raw" / "ds" / "fan" / "test").glob("*.wav"))
    target = tmp_path / "no" / "such" / "scores.csv" if where == "missing folder" else tmp_path
    # --machine pump has no model: the --out error coming first shows that the check precedes any work
    done = run(MAIN, "score", "--run", str(data["clean"]), "--machine", "pump", "--out", str(target), str(wav))
    assert done.returncode == 2 and done.stderr.startswith(f"error: --out {target}")
    assert ("does not exist" if where == "missing folder" else "is a folder") in done.stderr
    assert not (tmp_path / "no").exists()


# --- where the run folder goes ---------------------------------------------------------------------------

def test_output_dir_that_is_a_file(data, tmp_path) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    done = run(MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(target), *FAST)
    assert done.returncode == 2 and f"--output-dir {target} is a file" in done.stderr
    assert target.read_text() == "keep me\n"


def test_read_only_output_dir(data, read_only_dir) -> None:
    done = run(MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(read_only_dir / "run"),
               *FAST)
    assert done.returncode == 2 and f"--output-dir {read_only_dir / 'run'} is not writable" in done.stderr
    assert "Traceback" not in done.stderr


# --- a bug keeps its traceback ---------------------------------------------------------------------------

@pytest.mark.parametrize("error", [KeyError("a bug"), RuntimeError("CUDA out of memory (simulated)")])
def test_a_bug_keeps_its_traceback(data, tmp_path, monkeypatch, error) -> None:
    import asd.engine.train
    from asd.cli import main

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(asd.engine.train, "train_machine", broken)
    result = CliRunner().invoke(main, ["train", "--processed-dir", str(data["processed"]), "--output-dir",
                                       str(tmp_path / "r"), *FAST])
    assert result.exception is error  # not turned into a one-line message
    assert result.exit_code == 1 and "error:" not in result.output


# --- kill -9 mid-run, then rerun -------------------------------------------------------------------------

def test_kill_during_train_then_rerun_gives_identical_scores(data, tmp_path) -> None:
    from asd.cache.shard import Shard
    from asd.models.checkpoint import load_detector

    out = tmp_path / "run"
    args = [sys.executable, MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(out),
            "--model", "ae", "--epochs", "1000"]
    process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "ds" / "fan" / "train.log").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    for model in out.rglob("model.pt"):  # whatever was left either loads or is not there
        load_detector(model)
    (out / "ds" / "valve").mkdir(parents=True, exist_ok=True)
    (out / "ds" / "valve" / ".model.pt.partial").write_bytes(b"half a checkpoint")  # a save cut short
    done = run(MAIN, "train", "--processed-dir", str(data["processed"]), "--output-dir", str(out), *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.rglob("*.partial"))
    # thresholds come from the models' scores of held-out normal clips: equal thresholds, equal scores
    pd.testing.assert_frame_equal(pd.read_csv(out / "thresholds.csv"), pd.read_csv(data["clean"] / "thresholds.csv"))
    for machine in ("fan", "valve"):
        clean = load_detector(data["clean"] / "ds" / machine / "model.pt")
        again = load_detector(out / "ds" / machine / "model.pt")
        assert again.thresholds_ == clean.thresholds_ and again.history_ == clean.history_
        shard = Shard(data["processed"] / machine / "test.h5")
        pd.testing.assert_series_equal(again.score_clips(shard, device="cpu"), clean.score_clips(shard, device="cpu"))
        shard.close()


# --- the command line itself -----------------------------------------------------------------------------

def test_help_imports_no_torch_and_lists_every_command() -> None:
    code = ("import sys; sys.path.insert(0, 'source'); from asd.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    done = run("-c", code)
    assert done.returncode == 0 and done.stdout.strip().endswith("no torch"), done.stdout + done.stderr
    for command in ("prep", "synth", "inspect", "train", "test", "run", "score", "summarize"):
        assert f"  {command} " in done.stdout


def test_prep_subcommand_is_data_prep(tmp_path) -> None:
    from asd.cli import main

    result = CliRunner().invoke(main, ["prep", "--help"])
    assert result.exit_code == 0 and "--raw-dir" in result.output and "--config" in result.output
