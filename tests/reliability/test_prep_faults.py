"""Reliability matrix of data_prep: bad files, bad options, killed and concurrent runs, a full disk.

Each case builds the bad input, runs `python source/data_prep.py` as a user would (a subprocess), and
checks the exact outcome: exit status, the message (names the file or option and the reason), what was
written, and that every good shard is identical to the one a clean run writes. Cases that need root
(a small tmpfs for the full disk) skip with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from conftest import PROJECT_ROOT, assert_same_shard, build_dataset, shard_contents, write_wav

DATA_PREP = PROJECT_ROOT / "source" / "data_prep.py"
TRAIN = "section_00_source_train_normal_{:04d}_{}.wav"
TRUNCATED = "section_00_target_train_normal_0090_truncated.wav"


def data_prep(raw: Path, out: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The command a user types (one worker: no start-up cost in tests)."""
    return subprocess.run([sys.executable, str(DATA_PREP), "--raw-dir", str(raw), "--out-dir", str(out),
                           "--jobs", "1", "--quiet", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=raw.parent)


def shards(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.h5"))


def leftovers(out: Path) -> list[Path]:
    return sorted(out.rglob("*.partial"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small clean dataset (fan: train + test, pump: train) and the shards a clean run makes."""
    raw = tmp_path_factory.mktemp("clean") / "raw"
    build_dataset(raw / "ds", {"fan": (3, 2), "pump": (2, 0)}, seconds=1.5)
    out = raw.parent / "out"
    done = data_prep(raw, out)
    assert done.returncode == 0, done.stderr
    assert shards(out) == ["ds/fan/test.h5", "ds/fan/train.h5", "ds/pump/train.h5"]
    return raw, out


def copy_raw(clean: tuple[Path, Path], tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(clean[0], raw, symlinks=True)
    return raw


def assert_good_shards_identical(out: Path, reference: Path) -> None:
    assert shards(out) == shards(reference)
    for rel in shards(reference):
        assert_same_shard(reference / rel, out / rel)


# ---------------------------------------------------------------------------------------------------
# one bad file of each kind among good ones: reported and skipped (or noted), the rest written as clean


def _forge_rate(path: Path, rate: int) -> None:
    """Rewrite a PCM wav header's sample rate (and byte rate) to an implausible value."""
    data = bytearray(path.read_bytes())
    block_align = int.from_bytes(data[32:34], "little")
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * block_align).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _float_wav(path: Path, poison: float | None, everywhere: bool = False) -> None:
    data = (0.1 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)
    if poison is not None:
        if everywhere:
            data[:] = poison
        else:
            data[100:110] = poison
    sf.write(path, data, 16000, subtype="FLOAT")


BAD_FILES = {
    # name tail: (how to make it, the reason data_prep gives)
    "link": "broken symbolic link (points to",
    "notutf8": "file name is not valid UTF-8",
    "random": "unreadable audio",
    "zerobyte": "unreadable audio",
    "noframes": "empty audio file",
    "nan": "NaN or infinite samples",
    "allnan": "16000 NaN or infinite samples (of 16000)",
    "inf": "NaN or infinite samples",
    "rate1hz": "implausible sample rate 1 Hz",
    "toolong": "too long: 601 s (limit 600 s",
    "folder": "not a regular file",
}


@pytest.fixture(scope="module")
def zoo(clean: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The clean dataset plus, in fan/train, one file of every bad kind and a truncated one."""
    base = tmp_path_factory.mktemp("zoo")
    raw = base / "raw"
    shutil.copytree(clean[0], raw)
    train = raw / "ds" / "fan" / "train"
    names = {what: TRAIN.format(50 + k, what) for k, what in enumerate(BAD_FILES)}
    (train / names["link"]).symlink_to(base / "gone.wav")
    good = write_wav(base / "ok.wav", seconds=1.0)
    os.rename(base / "ok.wav", os.fsencode(str(train / "section_00_source_train_normal_0051_")) + b"\xff.wav")
    (train / names["random"]).write_bytes(np.random.default_rng(1).bytes(3000))
    (train / names["zerobyte"]).write_bytes(b"")
    sf.write(train / names["noframes"], np.zeros(0, np.int16), 16000, subtype="PCM_16")
    _float_wav(train / names["nan"], float("nan"))
    _float_wav(train / names["allnan"], float("nan"), everywhere=True)
    _float_wav(train / names["inf"], float("inf"))
    write_wav(train / names["rate1hz"], seconds=0.5)
    _forge_rate(train / names["rate1hz"], 1)
    sf.write(train / names["toolong"], np.zeros(601 * 1000, np.int16), 1000, subtype="PCM_16")
    (train / names["folder"]).mkdir()
    truncated = train / TRUNCATED  # sorts last: the clean clips keep their rows
    write_wav(truncated, seconds=2.0, seed=5)
    os.truncate(truncated, 44 + 2 * 20000)  # the header still declares 32000 samples
    out = base / "out"
    done = data_prep(raw, out)
    return {"raw": raw, "out": out, "done": done, "names": names, "good": good, "reference": clean[1]}


def test_zoo_run_succeeds_and_reports_every_bad_file(zoo: dict) -> None:
    done = zoo["done"]
    assert done.returncode == 0, done.stderr
    assert f"files skipped: {len(BAD_FILES)}" in done.stdout
    assert "note: 1 clips truncated:" in done.stdout


@pytest.mark.parametrize("what", sorted(BAD_FILES))
def test_bad_file_is_named_with_its_reason_and_skipped(zoo: dict, what: str) -> None:
    lines = [line.strip() for line in zoo["done"].stdout.splitlines()]
    name = zoo["names"][what] if what != "notutf8" else "section_00_source_train_normal_0051_\\xff.wav"
    hits = [line for line in lines if line.startswith(f"ds/fan/train/{name}:")]
    assert len(hits) == 1, zoo["done"].stdout
    assert BAD_FILES[what] in hits[0]
    summary = json.loads((zoo["out"] / "data_prep_summary.json").read_text())
    assert any(f["path"] == f"ds/fan/train/{name}" and BAD_FILES[what] in f["reason"]
               for f in summary["files_skipped"])


def test_truncated_file_is_kept_with_a_note(zoo: dict) -> None:
    with h5py.File(zoo["out"] / "ds" / "fan" / "train.h5", "r") as file:
        names = file["clips/file_name"].asstr()[()].tolist()
        row = names.index(TRUNCATED)
        assert file["clips/notes"].asstr()[row] == "truncated: header declares 32000 frames, file holds 20000"
        assert file["clips/n_samples"][row] == 20000 and file["clips/n_segments"][row] == 2


def test_other_shards_identical_to_a_clean_run(zoo: dict) -> None:
    out, reference = zoo["out"], zoo["reference"]
    for rel in ("ds/fan/test.h5", "ds/pump/train.h5"):
        assert_same_shard(reference / rel, out / rel)
    # fan/train holds the clean clips, unchanged, plus the truncated one at the end of the table
    ref, got = shard_contents(reference / "ds/fan/train.h5"), shard_contents(out / "ds/fan/train.h5")
    n = len(ref["waveform"])
    np.testing.assert_array_equal(got["waveform"][:n], ref["waveform"])
    np.testing.assert_array_equal(got["logmel"][:n], ref["logmel"])
    assert got["segments/name"][:n] == ref["segments/name"]
    assert leftovers(out) == []


# ---------------------------------------------------------------------------------------------------
# exotic but valid wav formats: accepted, converted, noted


EXOTIC = {
    # name tail: (soundfile format, subtype, rate, channels, the clip's notes)
    "u8": ("WAV", "PCM_U8", 16000, 1, "converted from PCM_U8"),
    "pcm24": ("WAV", "PCM_24", 16000, 1, "converted from PCM_24"),
    "pcm32": ("WAV", "PCM_32", 16000, 1, "converted from PCM_32"),
    "double": ("WAV", "DOUBLE", 16000, 1, "converted from DOUBLE"),
    "ulaw": ("WAV", "ULAW", 16000, 1, "converted from ULAW"),
    "alaw": ("WAV", "ALAW", 16000, 1, "converted from ALAW"),
    "wavex": ("WAVEX", "PCM_16", 16000, 1, ""),
    "rate8k": ("WAV", "PCM_16", 8000, 1, "resampled 8000->16000"),
    "three": ("WAV", "PCM_16", 16000, 3, "3ch->left"),
    "stereo48k": ("WAV", "FLOAT", 48000, 2, "2ch->left; converted from FLOAT; resampled 48000->16000"),
}


@pytest.fixture(scope="module")
def exotic(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    raw = tmp_path_factory.mktemp("exotic") / "raw"
    folder = raw / "ds" / "odd" / "train"
    folder.mkdir(parents=True)
    for k, (what, (fmt, subtype, rate, channels, _)) in enumerate(EXOTIC.items()):
        t = np.arange(int(1.5 * rate)) / rate
        data = np.stack([0.3 * np.sin(2 * np.pi * 300 * (c + 1) * t) for c in range(channels)], axis=1)
        sf.write(folder / TRAIN.format(k + 1, what), data, rate, format=fmt, subtype=subtype)
    out = raw.parent / "out"
    return data_prep(raw, out), out


@pytest.mark.parametrize("what", sorted(EXOTIC))
def test_exotic_format_is_accepted_with_a_note(exotic, what: str) -> None:
    done, out = exotic
    assert done.returncode == 0, done.stderr
    assert "files skipped" not in done.stdout
    with h5py.File(out / "ds" / "odd" / "train.h5", "r") as file:
        names = file["clips/file_name"].asstr()[()].tolist()
        row = names.index(TRAIN.format(sorted(EXOTIC, key=list(EXOTIC).index).index(what) + 1, what))
        assert file["clips/notes"].asstr()[row] == EXOTIC[what][4]
        assert abs(int(file["clips/n_samples"][row]) - 24000) <= 1
        first = int(file["clips/first_segment"][row])
        wave = file["waveform"][first]
        assert np.abs(wave).max() > 0.2 * 32768  # the tone survived the conversion, at its level
        assert np.isfinite(file["logmel"][first]).all()


# ---------------------------------------------------------------------------------------------------
# options: checked before any work, one line naming the option and what is allowed, nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "Invalid value for '--jobs': must be a positive number of workers"),
    (["--segment-seconds", "0"], "Invalid value for '--segment-seconds': 0.0 is not in the range 0.0<x<=600.0"),
    (["--hop-seconds", "-1"], "Invalid value for '--hop-seconds': -1.0 is not in the range 0.0<x<=600.0"),
    (["--n-fft", "32768"], "Invalid value for '--n-fft': 32768 is longer than a segment (--segment-seconds 1.0 "
                           "= 16000 samples)"),
    (["--segment-seconds", "0.01"], "Invalid value for '--n-fft': 1024 is longer than a segment"),
    (["--n-mels", "600"], "Invalid value for '--n-mels': 600 mel bands need more than the 513 frequency bins"),
    (["--n-mels", "0"], "Invalid value for '--n-mels': 0 is not in the range 1<=x<=1024"),
    (["--hop-length", "0"], "Invalid value for '--hop-length': 0 is not in the range 1<=x<=65536"),
    (["--hop-length", "2048"], "Invalid value for '--hop-length': 2048 is longer than --n-fft 1024"),
    (["--tail", "wrap"], "Invalid value for '--tail': 'wrap' is not one of 'last', 'pad', 'drop'"),
    (["--channel", "both"], "Invalid value for '--channel': 'both' is not one of 'left', 'right', 'mean'"),
    (["--jobs", "two"], "Invalid value for '--jobs': 'two' is not a valid integer"),
])
def test_bad_option_is_named_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (1, 0)}, seconds=1.0).parent
    out = tmp_path / "out"
    done = data_prep(raw, out, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert not out.exists()


def test_unknown_machine_is_named(clean: tuple[Path, Path], tmp_path: Path) -> None:
    done = data_prep(clean[0], tmp_path / "out", "--machines", "fan,valev")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: --machines: no machine type named 'valev' under "
                                   f"{clean[0]} (found: fan, pump)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing raw", "out is a file"])
def test_bad_folders_are_named(clean: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    raw, out = clean[0], tmp_path / "out"
    if kind == "missing raw":
        raw = tmp_path / "nowhere"
        expected = f"Invalid value for '--raw-dir': Directory '{raw}' does not exist."
    else:
        out.write_text("not a folder")
        expected = f"error: --out-dir {out} is a file, not a folder"
    done = data_prep(raw, out)
    assert done.returncode == 2 and expected in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------
# killed and concurrent runs


def _wait_for(predicate, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def bigger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Enough clips that a run takes a few seconds (several tasks per shard), and its clean shards."""
    raw = tmp_path_factory.mktemp("bigger") / "raw"
    build_dataset(raw / "ds", {"fan": (40, 4), "pump": (8, 0)}, seconds=1.0)
    out = raw.parent / "out"
    assert data_prep(raw, out).returncode == 0
    return raw, out


@pytest.mark.parametrize("force", [False, True], ids=["first run", "--force rebuild"])
def test_kill_9_mid_run_then_rerun_gives_identical_shards(bigger: tuple[Path, Path], tmp_path: Path,
                                                          force: bool) -> None:
    raw, reference = bigger
    out = tmp_path / "out"
    if force:  # a complete cache exists; the killed run was rebuilding it
        shutil.copytree(reference, out)
    args = [sys.executable, str(DATA_PREP), "--raw-dir", str(raw), "--out-dir", str(out), "--jobs", "1",
            "--quiet", *(["--force"] if force else [])]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: bool(leftovers(out))), "the run never started writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(leftovers(out)) == 1  # the half-written shard, under its temporary name only
    done = data_prep(raw, out)
    assert done.returncode == 0, done.stderr
    assert leftovers(out) == []  # cleaned by the next run, --force or not
    assert_good_shards_identical(out, reference)


def test_two_runs_at_once_both_succeed_with_identical_shards(bigger: tuple[Path, Path], tmp_path: Path) -> None:
    raw, reference = bigger
    out = tmp_path / "out"
    args = [sys.executable, str(DATA_PREP), "--raw-dir", str(raw), "--out-dir", str(out), "--jobs", "1",
            "--quiet"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert leftovers(out) == []
    assert_good_shards_identical(out, reference)
    record = json.loads((out / "data_prep_summary.json").read_text())  # whole, from one of the two runs
    # each run decided per shard up front: build it, or skip it when the other run had committed it
    assert sorted(record["shards_written"] + record["shards_skipped"]) == [str(out / r) for r in shards(reference)]
    assert not record["shards_failed"] and 0 <= record["clips"] <= 52


# ---------------------------------------------------------------------------------------------------
# a full disk


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def test_full_disk_fails_cleanly_and_commits_nothing_unverified(bigger: tuple[Path, Path], tmp_path: Path) -> None:
    raw, reference = bigger
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "6400k")  # room for fan/test and pump/train (2.9 MiB each), not also fan/train (3.9)
    try:
        out = disk / "out"
        done = data_prep(raw, out)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith(f"error: 1 shard(s) not written ({out}/ds/fan/train.h5: no space left on "
                                      "the device; nothing was committed)")
        assert leftovers(out) == []
        assert shards(out) == ["ds/fan/test.h5", "ds/pump/train.h5"]
        for rel in shards(out):  # what was committed is whole and verified
            assert_same_shard(reference / rel, out / rel)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------------
# faults injected inside the writer (in-process: the disk cannot be made to lie on cue otherwise)


def _prep_in_process(raw: Path, out: Path):
    from asd.cache.build import PrepConfig, run_prep

    return run_prep(PrepConfig(raw_dir=str(raw), out_dir=str(out), jobs=1), show_progress=False)


def test_bytes_that_do_not_read_back_are_never_committed(clean: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the file system lost (the data on disk is not what was handed to h5py) is caught by the
    read-back before the rename: that shard fails, the others are committed as in a clean run."""
    from asd.cache.writer import ShardWriter

    real_verify = ShardWriter._verify

    def corrupt_then_verify(self: ShardWriter) -> None:
        if self.final_path.parent.name == "pump":
            with h5py.File(self.tmp_path, "r") as file:
                offset = file["waveform"].id.get_chunk_info(0).byte_offset
            with open(self.tmp_path, "r+b") as handle:
                handle.seek(offset + 100)
                handle.write(b"\x55" * 64)
        real_verify(self)

    monkeypatch.setattr(ShardWriter, "_verify", corrupt_then_verify)
    out = tmp_path / "out"
    summary = _prep_in_process(clean[0], out)
    assert [(Path(f.path).relative_to(out).as_posix(), f.reason) for f in summary.shards_failed] == [
        ("ds/pump/train.h5", "waveform did not read back as written (checksum mismatch); nothing was committed")]
    assert shards(out) == ["ds/fan/test.h5", "ds/fan/train.h5"] and leftovers(out) == []
    for rel in shards(out):
        assert_same_shard(clean[1] / rel, out / rel)


def test_h5py_error_while_writing_fails_only_that_shard(clean: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from asd.cache.writer import ShardWriter

    real_add = ShardWriter._add

    def boom(rows) -> None:
        raise OSError("Can't write data (file write failed: errno = 5, error message = 'Input/output error')")

    def add_with_failing_logmel(self: ShardWriter, clips, segments) -> None:
        if self.final_path.parent.name == "fan":  # h5py fails while writing this shard's log-mels
            self.blocks["logmel"]._write_chunks = boom
        real_add(self, clips, segments)

    monkeypatch.setattr(ShardWriter, "_add", add_with_failing_logmel)
    out = tmp_path / "out"
    summary = _prep_in_process(clean[0], out)
    failed = sorted(Path(f.path).relative_to(out).as_posix() for f in summary.shards_failed)
    assert failed == ["ds/fan/test.h5", "ds/fan/train.h5"]
    assert all("Input/output error" in f.reason and "nothing was committed" in f.reason
               for f in summary.shards_failed)
    assert shards(out) == ["ds/pump/train.h5"] and leftovers(out) == []
    assert_same_shard(clean[1] / "ds/pump/train.h5", out / "ds/pump/train.h5")
    assert any(line.startswith("  FAILED: 2 shard(s) not written") for line in summary.lines())


def test_disk_full_for_a_moment_fails_that_shard_and_a_rerun_completes(bigger: tuple[Path, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The case that used to pass as complete: writes fail with ENOSPC, then space comes back while the
    writer goes on. The shard is failed (never committed); the next run writes it whole."""
    from asd.cache import writer as shard_module

    raw, reference = bigger
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "11m")  # the three shards take 2.9 + 3.9 + 2.9 MiB
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (10 * 1024 * 1024 + 256 * 1024))  # the first shard (fan/test) does not fit
        real_write = shard_module._GuardedFile.write

        def write_then_free_space(self, data) -> int:
            done = real_write(self, data)
            if self.error is not None and filler.exists():
                filler.unlink()  # space is back; the writer carries on
            return done

        monkeypatch.setattr(shard_module._GuardedFile, "write", write_then_free_space)
        out = disk / "out"
        summary = _prep_in_process(raw, out)
        assert not filler.exists()
        assert [(Path(f.path).relative_to(out).as_posix(), f.reason) for f in summary.shards_failed] == [
            ("ds/fan/test.h5", "no space left on the device; nothing was committed")]
        assert shards(out) == ["ds/fan/train.h5", "ds/pump/train.h5"] and leftovers(out) == []
        monkeypatch.undo()
        again = data_prep(raw, out)
        assert again.returncode == 0, again.stderr
        assert "shards written 1, skipped (up to date) 2" in again.stdout
        assert_good_shards_identical(out, reference)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
