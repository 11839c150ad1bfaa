"""Discovery never drops a file in silence: what data_prep, `main` and `score` read below a folder, and
what they say about everything they do not read. Each case runs the real command on a tiny tree with
upper-case extensions, a FLAC clip, a dataset folder that is a symbolic link, a link loop, a broken link
and files that are not clips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import soundfile as sf

from conftest import PROJECT_ROOT, build_dataset, write_wav

MAIN = str(PROJECT_ROOT / "source" / "main.py")
DATA_PREP = str(PROJECT_ROOT / "source" / "data_prep.py")
FAST = ["--model", "ae", "--epochs", "1"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT, env=env)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`raw/linked` is a symbolic link to a dataset folder elsewhere whose clips have .wav, .WAV, .Wav and
    .flac extensions, next to files that are not clips; prepped once."""
    base = tmp_path_factory.mktemp("discovery")
    real = build_dataset(base / "elsewhere" / "ds", {"fan": (8, 4)}, seconds=1.0)
    train = real / "fan" / "train"
    clips = sorted(train.glob("*.wav"))
    clips[0].rename(clips[0].with_suffix(".WAV"))
    clips[1].rename(clips[1].with_suffix(".Wav"))
    samples, rate = sf.read(clips[2], dtype="int16")
    sf.write(clips[2].with_suffix(".flac"), samples, rate, subtype="PCM_16")
    clips[2].unlink()
    (train / "notes.txt").write_text("recorded on a Tuesday\n")
    (train / "section_00_source_train_normal_0099_gone.wav").symlink_to(base / "nowhere.wav")
    write_wav(real / "fan" / "validation" / "section_00_source_train_normal_0100_x.wav", seconds=1.0)
    raw = base / "raw"
    raw.mkdir()
    (raw / "linked").symlink_to(real, target_is_directory=True)
    (real / "fan" / "loop").symlink_to(raw, target_is_directory=True)  # a way back up: must not loop
    out = base / "processed"
    done = run(DATA_PREP, "--raw-dir", raw, "--out-dir", out, "--jobs", "1", "--quiet")
    return {"base": base, "raw": raw, "out": out, "done": done, "train": train}


def test_linked_dataset_and_every_extension_case_are_prepped(tree: dict) -> None:
    done = tree["done"]
    assert done.returncode == 0, done.stderr[-2000:]
    shard = tree["out"] / "linked" / "fan" / "train.h5"
    with h5py.File(shard, "r") as file:
        names = file["clips/file_name"].asstr()[()].tolist()
    suffixes = sorted(Path(name).suffix for name in names)
    assert suffixes == [".WAV", ".Wav", ".flac"] + [".wav"] * 5
    assert (tree["out"] / "linked" / "fan" / "test.h5").is_file()


@pytest.mark.parametrize(("path", "reason"), [
    ("linked/fan/train/notes.txt", "not an audio file"),
    ("linked/fan/train/section_00_source_train_normal_0099_gone.wav", "broken symbolic link"),
    ("linked/fan/validation/section_00_source_train_normal_0100_x.wav", "not directly inside a split folder"),
    ("linked/fan/loop", "symbolic link not followed: a link back to"),
])
def test_every_file_not_read_is_named_with_its_reason(tree: dict, path: str, reason: str) -> None:
    lines = [line.strip() for line in tree["done"].stdout.splitlines()]
    assert any(line.startswith(f"{path}:") and reason in line for line in lines), tree["done"].stdout
    assert "files skipped: 4" in tree["done"].stdout
    summary = json.loads((tree["out"] / "data_prep_summary.json").read_text())
    assert any(f["path"] == path and reason in f["reason"] for f in summary["files_skipped"])


def test_main_finds_a_linked_processed_folder_and_score_reads_the_same_files(tree: dict, tmp_path: Path) -> None:
    processed = tmp_path / "processed"
    processed.mkdir()
    (processed / "mine").symlink_to(tree["out"] / "linked", target_is_directory=True)
    out = tmp_path / "run"
    done = run(MAIN, "train", "--processed-dir", processed, "--output-dir", out, *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["trained"] == ["mine/fan"]
    # score: a folder gives its clips of every case and names what it leaves out
    scores = tmp_path / "scores.csv"
    done = run(MAIN, "score", "--run", out, "--machine", "fan", "--out", scores, tree["train"])
    assert done.returncode == 0, done.stderr[-2000:]
    scored = sorted(Path(p).suffix for p in pd.read_csv(scores)["file"])
    assert scored == [".WAV", ".Wav", ".flac"] + [".wav"] * 5
    assert f"skipped {tree['train'] / 'notes.txt'}: not an audio file" in done.stderr
    assert "broken symbolic link" in done.stderr


def test_a_loop_never_hangs_the_walk(tmp_path: Path) -> None:
    from asd.walk import walk

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "twin").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "b" / "x.wav").write_bytes(b"")
    listed = walk(tmp_path)
    assert listed.files == [tmp_path / "a" / "b" / "x.wav"]
    reasons = dict(listed.unread)
    assert "a link back to" in reasons[tmp_path / "a" / "b" / "up"]
    assert "the same folder as" in reasons[tmp_path / "twin"]
    assert os.path.islink(tmp_path / "twin")
