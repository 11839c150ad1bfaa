"""One writer per run folder, and writes that fail part-way leave nothing half-written. Each case runs the
real command; the full-disk cases mount a small tmpfs (root only: they skip, saying why, otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT_ROOT, build_dataset

MAIN = str(PROJECT_ROOT / "source" / "main.py")
DATA_PREP = str(PROJECT_ROOT / "source" / "data_prep.py")
FAST = ["--model", "ae", "--epochs", "1"]


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT_ROOT, env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("writes")
    build_dataset(base / "raw" / "ds", {"fan": (8, 4), "valve": (8, 4)}, seconds=1.0)
    done = run(DATA_PREP, "--raw-dir", base / "raw", "--out-dir", base / "processed", "--jobs", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    trained = base / "trained"
    done = run(MAIN, "train", "--processed-dir", base / "processed" / "ds", "--output-dir", trained, *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"base": base, "raw": base / "raw" / "ds", "processed": base / "processed" / "ds", "trained": trained}


@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(folder, size): a small tmpfs there, unmounted afterwards (root only)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs (a full disk)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill a file system to the last byte, then free `leave` bytes again."""
    with open(folder / "filler", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(folder / "filler", max(0, (folder / "filler").stat().st_size - leave))


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# --- one writer per run folder ---------------------------------------------------------------------------

def test_second_run_into_a_busy_folder_fails_at_once_naming_the_first(data, tmp_path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, MAIN, "train", "--processed-dir", str(data["processed"]),
                              "--output-dir", str(out), "--model", "ae", "--epochs", "1000"],
                             cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "ds" / "fan" / "train.log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        config_before = (out / "config.json").read_text()
        start = time.monotonic()
        second = run(MAIN, "run", "--processed-dir", data["processed"], "--output-dir", out, *FAST)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(f"error: run folder {out} is in use by another run (pid {first.pid} on ")
        assert "main.py train" in second.stderr and "started 20" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and time.monotonic() - start < 60
        assert (out / "config.json").read_text() == config_before  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from asd.run_folder import RunLock

    RunLock.acquire(out).release()  # the kernel dropped the lock of the killed process: usable at once


def test_a_test_stage_refuses_a_busy_folder(data) -> None:
    out = data["trained"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, 'source')\n"
                               "from asd.run_folder import RunLock\n"
                               f"lock = RunLock.acquire({str(out)!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = run(MAIN, "test", "--run", out)
        assert done.returncode == 2 and f"is in use by another run (pid {holder.pid} on " in done.stderr
        assert not (out / "predictions.csv").exists()
    finally:
        holder.kill()
        holder.wait()


# --- writes that fail part-way ---------------------------------------------------------------------------

def test_model_that_cannot_be_saved_fails_only_its_machine_type(data, tmp_path, mount_tmpfs) -> None:
    out = tmp_path / "run"
    mount_tmpfs(out / "ds" / "fan", "64k")  # train.log fits, model.pt does not
    done = run(MAIN, "run", "--processed-dir", data["processed"], "--output-dir", out, *FAST)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "inline_container" not in done.stderr
    assert f"error: ds/fan: train failed: model not saved: cannot write {out / 'ds' / 'fan' / 'model.pt'} " \
           "(no space left on device)" in done.stderr, done.stderr
    assert json.loads((out / "config.json").read_text())["trained"] == ["ds/valve"]
    assert set(pd.read_csv(out / "thresholds.csv")["machine"]) == {"valve"}
    assert (out / "ds" / "valve" / "model.pt").is_file() and not (out / "ds" / "fan" / "model.pt").exists()
    assert not partials(out)


def test_score_out_on_a_full_disk_leaves_no_file(data, tmp_path, mount_tmpfs) -> None:
    run_dir = data["trained"]
    full = mount_tmpfs(tmp_path / "full", "64k")
    fill(full)
    target = full / "scores.csv"
    done = run(MAIN, "score", "--run", run_dir, "--machine", "fan", "--out", target, data["raw"] / "fan" / "test")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {target}: No space left on device")
    assert "Traceback" not in done.stderr
    assert not target.exists() and not partials(full)


def test_score_with_a_full_temporary_folder_is_one_line_not_a_crash(data, tmp_path, mount_tmpfs) -> None:
    run_dir = data["trained"]
    temp = mount_tmpfs(tmp_path / "tmp", "64k")
    fill(temp, leave=16384)  # room for tempfile's probe of the folder, not for the temporary shard
    done = run(MAIN, "score", "--run", run_dir, "--machine", "fan", "--out", tmp_path / "s.csv",
               data["raw"] / "fan" / "test", env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # not -11 (a crash of HDF5)
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "s.csv").exists()
    assert sorted(p.name for p in temp.iterdir()) == ["filler"]


def test_page_at_a_file_size_limit_leaves_nothing(tmp_path) -> None:
    page = tmp_path / "report.html"
    code = ("import resource, sys; sys.path.insert(0, 'source')\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "from asd.errors import BadState\nfrom asd.reports.html import write_page\n"
            f"try:\n    write_page({str(page)!r}, 'x' * 100000)\n"
            "except BadState as err:\n    print(err)\n")
    done = run("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cannot write {page}: File too large")
    assert list(tmp_path.iterdir()) == []
