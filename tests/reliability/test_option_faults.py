"""Options and `--config` values are checked the same way, before any folder is made: nan and infinity
refused for every float, integers whole and in range (a seed below 2**32), `null` and wrong types named by
their key; and faults of the environment (an unreachable scheduler, a read-only output folder, a bad
MPLBACKEND) found before any work. Each case runs the real command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from asd.engine.config import RunConfig
from asd.errors import BadInput
from conftest import PROJECT_ROOT

MAIN = str(PROJECT_ROOT / "source" / "main.py")
DATA_PREP = str(PROJECT_ROOT / "source" / "data_prep.py")


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT_ROOT, env=env)


def refused(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


# --- the command line ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "option"), [
    (["--val-fraction", "nan"], "--val-fraction"),
    (["--min-delta", "nan"], "--min-delta"),
    (["--threshold-percentile", "inf"], "--threshold-percentile"),
    (["--threshold-percentile", "-inf"], "--threshold-percentile"),
    (["--seed", str(2**32)], "--seed"),
    (["--seeds", f"0,{2**32}"], "--seeds"),
    (["--epochs", "1.7"], "--epochs"),
    (["--epochs", str(10**12)], "--epochs"),
    (["--model", "gmm", "--model-option", "reg_covar=NaN"], "--model-option"),
    (["--model", "gmm", "--model-option", "max_components=1.7"], "--model-option"),
])
def test_run_option_refused_before_any_folder(synth_set, tmp_path, args, option) -> None:
    out = tmp_path / "run"
    done = run(MAIN, "run", "--processed-dir", synth_set["processed"], "--output-dir", out, *args)
    refused(done, option)
    assert not out.exists()


def model_options(model: str, *settings: str) -> dict:
    """What `--model MODEL --model-option SETTING ...` makes of its settings (no command run)."""
    options = {"model": model, "epochs": None, "seed": 0, "device": "cpu", "aggregate": "mean",
               "processed_dir": "data/processed", "machines": (), "val_fraction": 0.1,
               "threshold_method": "gamma", "threshold_percentile": 90.0, "model_option": settings}
    return RunConfig.from_options(options).model_options


def test_a_list_setting_reads_with_or_without_brackets_and_refuses_a_list_inside() -> None:
    assert model_options("gmm", "spectrum_poolings=0,0.5") == {"spectrum_poolings": (0, 0.5)}
    assert model_options("gmm", "spectrum_poolings=[0, 0.5]") == {"spectrum_poolings": (0, 0.5)}
    assert model_options("gmm", "spectrum_poolings=") == {"spectrum_poolings": ()}
    assert model_options("ensemble", "members=gmm,embed") == {"members": ("gmm", "embed")}
    with pytest.raises(BadInput, match=r"--model-option 'spectrum_poolings=\[\[0\]\]': expected comma-sep"):
        model_options("gmm", "spectrum_poolings=[[0]]")
    with pytest.raises(BadInput, match=r"--model-option: spectrum_poolings must be r values in \[0, 1\]"):
        model_options("gmm", "spectrum_poolings=[2]")
    with pytest.raises(BadInput, match="--model-option: ensemble members must be model names"):
        model_options("ensemble", "members=gmm,nothing")


@pytest.mark.parametrize(("command", "args", "option"), [
    (["synth", "--scale", "nan"], [], "--scale"),
    (["synth", "--clip-seconds", "inf"], [], "--clip-seconds"),
    (["synth", "--anomaly-strength", "nan"], [], "--anomaly-strength"),
    (["synth", "--seed", str(2**32)], [], "--seed"),
    (["explore", "--audio-seconds", "nan"], [], "--audio-seconds"),
    (["explore", "--max-page-mb", "inf"], [], "--max-page-mb"),
])
def test_other_commands_refuse_non_finite_numbers(tmp_path, command, args, option) -> None:
    out = tmp_path / "out"
    done = run(MAIN, *command, "--out", out, *args)
    refused(done, option)
    assert not out.exists()


@pytest.mark.parametrize("args", [["--segment-seconds", "nan"], ["--hop-seconds", "inf"], ["--jobs", str(2**40)]])
def test_data_prep_refuses_non_finite_numbers(synth_set, tmp_path, args) -> None:
    out = tmp_path / "processed"
    done = run(DATA_PREP, "--raw-dir", synth_set["raw"], "--out-dir", out, *args)
    refused(done, args[0])
    assert not out.exists()


# --- the config file: the same checks, named by key ------------------------------------------------------

@pytest.mark.parametrize(("line", "key", "words"), [
    ("epochs: 1.7", "epochs", "'1.7' is not a valid integer"),
    ("epochs: true", "epochs", "is not a valid integer"),
    ("seed: null", "seed", "null is not a value"),
    ("seed: 4294967296", "seed", "larger than 4294967295"),
    ("val_fraction: .nan", "val_fraction", "not a finite number"),
    ("min_delta: .inf", "min_delta", "not a finite number"),
    ("threshold_percentile: [10, 20]", "threshold_percentile", "where one value is expected"),
    ("processed_dir: {a: 1}", "processed_dir", "where one value is expected"),
    ("patience: 2020-01-01", "patience", "not a value this option takes"),
    ("model: 5", "model", "'5' is not one of"),
])
def test_config_value_refused_by_key_before_any_folder(synth_set, tmp_path, line, key, words) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"processed_dir: {synth_set['processed']}\nmodel: gmm\n{line}\n"
                      if not line.startswith(("processed_dir", "model")) else f"{line}\n")
    out = tmp_path / "run"
    done = run(MAIN, "run", "--config", config, "--output-dir", out)
    refused(done, f"{config}: key {key!r}", words)
    assert not out.exists()


def test_config_null_means_the_default_where_the_default_is_unset(synth_set, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"processed_dir: {synth_set['processed']}\nmodel: gmm\nepochs: null\nmax_epochs: null\n"
                      "machines: [fan]\n")
    done = run(MAIN, "train", "--config", config, "--output-dir", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]


# --- the environment ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_scheduler_in_data_prep_is_one_line_at_once(synth_set, tmp_path) -> None:
    out = tmp_path / "processed"
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    done = run(DATA_PREP, "--raw-dir", synth_set["raw"], "--out-dir", out, "--scheduler", address, "--quiet")
    refused(done, f"--scheduler {address}: no scheduler can be reached there")
    assert len(done.stderr.strip().splitlines()) == 1 and time.monotonic() - start < 20
    assert not out.exists()


def test_read_only_explore_out_is_refused_before_the_statistics(synth_set, read_only_dir) -> None:
    out = read_only_dir / "pages"
    done = run(MAIN, "explore", "--processed-dir", synth_set["processed"], "--out", out)
    refused(done, f"--out {out} is not writable")
    assert done.stdout == ""  # nothing was computed first


@pytest.mark.parametrize("command", ["run", "explore"])
def test_bad_mplbackend_is_named_before_any_work(synth_set, tmp_path, command) -> None:
    out = tmp_path / "out"
    args = (["run", "--processed-dir", synth_set["processed"], "--output-dir", out, "--model", "gmm"]
            if command == "run" else ["explore", "--processed-dir", synth_set["processed"], "--out", out])
    done = run(MAIN, *args, env={**os.environ, "MPLBACKEND": "no-such-backend"})
    refused(done, "MPLBACKEND='no-such-backend'", "MPLBACKEND=Agg")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "training" not in done.stdout and not out.exists()
