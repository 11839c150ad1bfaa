"""`python source/main.py inspect`: the shard report, the PNG, folder listings, and refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.cache.store import shard_path
from asd.cache.writer import ShardWriter
from asd.cli import main
from conftest import PROJECT_ROOT, REAL_ROOT, build_dataset, requires_real, write_wav


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of a small dataset whose fan/train holds one stereo clip (so one clip has a note)."""
    raw = build_dataset(tmp_path_factory.mktemp("raw") / "ds", {"fan": (3, 2), "pump": (2, 0)})
    write_wav(raw / "fan" / "train" / "section_00_source_train_normal_0042_stereo_mic.wav", seconds=3.0,
              channels=2)
    out = tmp_path_factory.mktemp("processed")
    run_prep(PrepConfig(raw_dir=str(raw.parent), out_dir=str(out), jobs=1), show_progress=False)
    return out


def inspect(*args: str):
    return CliRunner().invoke(main, ["inspect", *args])


def test_report_shows_settings_counts_shapes_names_and_notes(processed: Path) -> None:
    path = shard_path(processed, "ds", "fan", "train")
    result = inspect(str(path))
    assert result.exit_code == 0, result.output
    text = result.output
    shard = Shard(path)
    n = shard.n_segments
    assert n == 3 * 2 + 3
    assert f"fingerprint      {FeatureConfig().fingerprint()}" in text
    assert "machine          fan" in text and "split            train" in text
    assert "n_mels=128" in text and "tail=last" in text and "channel=left" in text
    assert f"clips: 4    segments: {n}" in text
    assert f"/waveform  int16 [{n}, 16000]" in text
    assert f"/logmel    float32 [{n}, 128, 32]" in text
    assert "first_segment" in text and "start_sample" in text
    names = shard.segments["name"].tolist()
    assert all(name in text for name in names[:5]) and names[5] not in text
    assert "clips with notes: 1" in text
    assert "section_00_source_train_normal_0042_stereo_mic.wav: 2ch->left" in text
    # the counts table has one row per section x domain x label
    assert "source normal" in text and "target normal" in text
    assert "clip lengths: min 2.00 s, median 2.00 s, max 3.00 s" in text
    shard.close()


def test_names_option(processed: Path) -> None:
    result = inspect(str(shard_path(processed, "ds", "pump", "train")), "--names", "4")
    assert result.exit_code == 0
    listed = [line.strip() for line in result.output.splitlines() if line.strip().startswith("index=")]
    # build_dataset makes the last training clip of a machine a target-domain one
    domains = ["source", "source", "target", "target"]
    expected = [f"index={i // 2}__segment_id={i % 2}__domain={domains[i]}__label=normal" for i in range(4)]
    assert listed == expected


def test_png_of_a_segment(processed: Path, tmp_path: Path) -> None:
    png = tmp_path / "plots" / "seg.png"
    result = inspect(str(shard_path(processed, "ds", "fan", "test")), "--png", str(png), "--segment", "3")
    assert result.exit_code == 0, result.output
    assert f"wrote {png}" in result.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_png_segment_out_of_range(processed: Path, tmp_path: Path) -> None:
    result = inspect(str(shard_path(processed, "ds", "pump", "train")), "--png", str(tmp_path / "x.png"),
                     "--segment", "99")
    assert result.exit_code == 2 and "out of range" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_folder_lists_its_shards(processed: Path) -> None:
    result = inspect(str(processed))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3  # fan test/train, pump train
    fingerprint = FeatureConfig().fingerprint()
    for line, (machine, split, clips, segments) in zip(
            lines, [("fan", "test", 2, 4), ("fan", "train", 4, 9), ("pump", "train", 2, 4)], strict=True):
        assert line.startswith(str(shard_path(processed, "ds", machine, split)))
        assert f"clips={clips} segments={segments} fingerprint={fingerprint}" in line


def test_empty_folder(tmp_path: Path) -> None:
    result = inspect(str(tmp_path))
    assert result.exit_code != 0 and "no shards under" in result.output


def _write_partial(final: Path) -> Path:
    """A shard whose writer never committed: what a crash leaves behind."""
    config = FeatureConfig()
    writer = ShardWriter(final, config, {"machine": final.parent.name})
    waves = np.zeros((1, config.segment_samples), dtype=np.int16)
    clip = {"rel_path": "m/train/x.wav", "file_name": "x.wav", "machine": "m", "section": "00",
            "domain": "source", "split": "train", "label": "normal", "attributes": "", "n_samples": 16000,
            "original_sample_rate": 16000, "original_channels": 1, "notes": ""}
    writer.add_clips([clip], [(waves, np.zeros((1, config.n_mels, config.n_frames), np.float32), [0])])
    writer.file.close()
    return writer.tmp_path


def test_partial_file_is_refused(tmp_path: Path) -> None:
    partial = _write_partial(tmp_path / "m" / "train.h5")
    assert partial.exists() and not (tmp_path / "m" / "train.h5").exists()
    result = inspect(str(partial))
    assert result.exit_code == 2
    assert "not a complete shard" in result.stderr and "rerun data_prep" in result.stderr
    # and a folder listing never shows it
    assert "no shards under" in inspect(str(tmp_path)).output


def test_incomplete_file_under_the_final_name_is_refused(tmp_path: Path) -> None:
    partial = _write_partial(tmp_path / "m" / "train.h5")
    final = partial.rename(tmp_path / "m" / "train.h5")
    result = inspect(str(final))
    assert result.exit_code == 2 and "not a complete shard" in result.stderr


def test_not_hdf5_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "train.h5"
    bogus.write_bytes(b"definitely not hdf5" * 10)
    result = inspect(str(bogus))
    assert result.exit_code == 2 and result.stderr.startswith("error:")


def test_main_script_inspect(processed: Path) -> None:
    path = shard_path(processed, "ds", "pump", "train")
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "source" / "main.py"), "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "clips: 2    segments: 4" in done.stdout and "fingerprint" in done.stdout


@requires_real
def test_real_shard_report(tmp_path: Path) -> None:
    run_prep(PrepConfig(raw_dir=str(REAL_ROOT), out_dir=str(tmp_path), jobs=1, machines=("ToyTrain",)),
             show_progress=False)
    path = shard_path(tmp_path, "dcase2023t2", "ToyTrain", "test")
    result = inspect(str(path), "--png", str(tmp_path / "toy.png"))
    assert result.exit_code == 0, result.output
    assert "clips: 2    segments: 24" in result.output
    # one row per section x domain x label (pandas leaves repeated index levels blank)
    assert re.search(r"^\s+00\s+target\s+anomaly\s+1\s+12$", result.output, re.MULTILINE)
    assert re.search(r"^\s+normal\s+1\s+12$", result.output, re.MULTILINE)
    assert "clip lengths: min 12.00 s, median 12.00 s, max 12.00 s" in result.output
    assert (tmp_path / "toy.png").stat().st_size > 5000
