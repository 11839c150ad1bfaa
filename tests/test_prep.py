"""data_prep end to end: shard content and contract, caching, refusal of other settings, killed runs,
and the documented treatment of every kind of bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from asd.cache.build import CLIPS_PER_TASK, PrepConfig, PrepSummary, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard, StaleShard, segment_name
from asd.cache.store import find_shards, shard_path
from asd.cache.writer import ShardWriter
from asd.cli.prep import prep_command
from conftest import (
    PROJECT_ROOT,
    REAL_ROOT,
    assert_shard_matches_sources,
    build_dataset,
    requires_real,
    write_wav,
)

LONG_ATTRIBUTES = "car_B1_spd_31V_mic_1_noise_factory_floor_with_a_rather_long_tail_µ"
SEGMENT_NAME = re.compile(r"index=(\d+)__segment_id=(\d+)__domain=(source|target|unknown)"
                          r"__label=(normal|anomaly|unknown)")


def prep(raw: Path, out: Path, jobs: int = 1, force: bool = False, **features) -> PrepSummary:
    """One in-process data_prep run (jobs=1 keeps tests fast: no worker start-up)."""
    cfg = PrepConfig(raw_dir=str(raw), out_dir=str(out), jobs=jobs, force=force,
                     features=FeatureConfig(**features))
    return run_prep(cfg, show_progress=False)


def mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(out.rglob("*.h5"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PrepSummary]:
    """A two-machine 2024-style dataset, with a 2.5 s clip and a very long name, prepared once."""
    raw = build_dataset(tmp_path_factory.mktemp("raw") / "dcase2024", {"fan": (4, 4), "valve": (3, 2)})
    write_wav(raw / "fan" / "train" / f"section_00_source_train_normal_0099_{LONG_ATTRIBUTES}.wav",
              seconds=2.5, seed=99)
    out = tmp_path_factory.mktemp("processed")
    summary = prep(raw.parent, out)
    return raw.parent, out, summary


def test_summary_counts(built: tuple[Path, Path, PrepSummary]) -> None:
    raw, out, summary = built
    assert summary.clips == 14
    assert summary.segments == 13 * 2 + 3  # 2 s clips -> 2 segments, the 2.5 s clip -> 3 ("last")
    assert sorted(summary.shards_written) == [str(out / "dcase2024" / m / f"{s}.h5")
                                              for m in ("fan", "valve") for s in ("test", "train")]
    assert summary.shards_skipped == [] and summary.files_skipped == []
    record = json.loads((out / "data_prep_summary.json").read_text())
    assert record["clips"] == 14 and record["config"]["features"]["n_mels"] == 128
    assert any("14 clips -> 29 segments" in line for line in summary.lines())


def test_round_trip_waveform_and_logmel(built: tuple[Path, Path, PrepSummary]) -> None:
    raw, out, _ = built
    shards = find_shards(out)
    assert len(shards) == 4
    for path in shards:
        assert_shard_matches_sources(path, raw)


def test_clip_and_segment_tables_agree(built: tuple[Path, Path, PrepSummary]) -> None:
    raw, out, _ = built
    shard = Shard(shard_path(out, "dcase2024", "fan", "train"))
    clips, segments = shard.clips, shard.segments
    assert len(clips) == 5 and shard.n_segments == len(segments) == 11
    # CSR: contiguous, in clip order, covering every segment exactly once
    n = clips["n_segments"].to_numpy()
    np.testing.assert_array_equal(clips["first_segment"], np.concatenate([[0], np.cumsum(n)[:-1]]))
    assert n.sum() == len(segments)
    np.testing.assert_array_equal(segments["clip_index"], np.repeat(np.arange(len(clips)), n))
    np.testing.assert_array_equal(segments["segment_id"], np.concatenate([np.arange(k) for k in n]))
    for row in segments.itertuples():
        clip = clips.iloc[row.clip_index]
        assert row.name == segment_name(row.clip_index, row.segment_id, clip["domain"], clip["label"])
        index, segment_id, domain, label = SEGMENT_NAME.fullmatch(row.name).groups()
        assert (int(index), int(segment_id), domain, label) == (row.clip_index, row.segment_id,
                                                                 clip["domain"], clip["label"])
    # the clip table says what the names and folders say
    by_name = clips.set_index("file_name")
    target = by_name.loc["section_00_target_train_normal_0004_spd_3.wav"]
    assert (target["domain"], target["label"], target["section"], target["split"], target["attributes"],
            target["machine"]) == ("target", "normal", "00", "train", "spd_3", "fan")
    assert target["rel_path"] == "dcase2024/fan/train/section_00_target_train_normal_0004_spd_3.wav"
    assert target["n_samples"] == 32000
    assert (target["original_sample_rate"], target["original_channels"]) == (16000, 1)
    test = Shard(shard_path(out, "dcase2024", "fan", "test")).clips
    assert sorted(set(zip(test["domain"], test["label"], strict=True))) == [
        ("source", "anomaly"), ("source", "normal"), ("target", "anomaly"), ("target", "normal")]
    shard.close()


def test_long_utf8_names_survive(built: tuple[Path, Path, PrepSummary]) -> None:
    raw, out, _ = built
    path = shard_path(out, "dcase2024", "fan", "train")
    long_name = f"section_00_source_train_normal_0099_{LONG_ATTRIBUTES}.wav"
    assert len(long_name) > 100
    clips = Shard(path).clips
    row = clips[clips["file_name"] == long_name].iloc[0]
    assert row["attributes"] == LONG_ATTRIBUTES
    assert row["rel_path"] == f"dcase2024/fan/train/{long_name}"
    with h5py.File(path, "r") as file:
        for group in ("clips", "segments"):
            for name, dataset in file[group].items():
                if dataset.dtype.kind == "O":
                    info = h5py.check_string_dtype(dataset.dtype)
                    assert info.encoding == "utf-8" and info.length is None, f"{group}/{name}"


def test_attributes_hold_every_setting(built: tuple[Path, Path, PrepSummary]) -> None:
    raw, out, _ = built
    config = FeatureConfig()
    shard = Shard(shard_path(out, "dcase2024", "valve", "test"))
    attrs = shard.attrs
    for key, value in config.to_dict().items():
        assert attrs[key] == ("none" if value is None else value), key
    assert attrs["fingerprint"] == shard.fingerprint == config.fingerprint()
    assert shard.feature_config == config
    assert attrs["complete"] and attrs["schema_version"] >= 1
    assert (attrs["n_clips"], attrs["n_segments"]) == (2, 4)
    assert (attrs["dataset"], attrs["machine"], attrs["split"]) == ("dcase2024", "valve", "test")
    assert attrs["source_root"] == str(raw.resolve())
    for key in ("package_version", "created_utc", "source_digest", "segment_samples", "hop_samples"):
        assert attrs[key] not in ("", None), key
    shard.close()


def test_dataset_shapes_dtypes_and_chunk_sizes(built: tuple[Path, Path, PrepSummary]) -> None:
    _, out, _ = built
    with h5py.File(shard_path(out, "dcase2024", "fan", "train"), "r") as file:
        assert file["waveform"].dtype == np.int16 and file["waveform"].shape == (11, 16000)
        assert file["logmel"].dtype == np.float32 and file["logmel"].shape == (11, 128, 32)
        datasets = [file["waveform"], file["logmel"], *file["clips"].values(), *file["segments"].values()]
        for dataset in datasets:
            itemsize = 16 if dataset.dtype.kind == "O" else dataset.dtype.itemsize  # vlen: hvl_t
            chunk_bytes = int(np.prod(dataset.chunks)) * itemsize
            assert 10 * 1024 <= chunk_bytes <= 1024 * 1024, (dataset.name, chunk_bytes)


def test_shard_pickles_and_reopens_lazily(built: tuple[Path, Path, PrepSummary]) -> None:
    import pickle

    _, out, _ = built
    shard = Shard(shard_path(out, "dcase2024", "valve", "train"))
    clone = pickle.loads(pickle.dumps(shard))
    assert clone._file is None
    np.testing.assert_array_equal(clone.logmel(slice(0, 2)), shard.logmel(slice(0, 2)))
    shard.close()
    clone.close()


# ---------------------------------------------------------------------------------------------------
# caching


def test_second_run_writes_nothing(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 2), "pump": (2, 1)}).parent
    out = tmp_path / "out"
    first = prep(raw, out)
    before = mtimes(out)
    assert len(first.shards_written) == 4 and len(before) == 4
    second = prep(raw, out)
    assert second.shards_written == [] and sorted(second.shards_skipped) == sorted(before)
    assert second.clips == 0
    assert mtimes(out) == before


def test_new_clip_rebuilds_only_its_shard(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 2), "pump": (2, 1)}).parent
    out = tmp_path / "out"
    prep(raw, out)
    before = mtimes(out)
    write_wav(raw / "ds" / "pump" / "train" / "section_00_source_train_normal_0003_spd_9.wav", seed=7)
    summary = prep(raw, out)
    rebuilt = str(shard_path(out, "ds", "pump", "train"))
    assert summary.shards_written == [rebuilt] and len(summary.shards_skipped) == 3
    after = mtimes(out)
    assert after[rebuilt] != before[rebuilt]
    del after[rebuilt], before[rebuilt]
    assert after == before  # the other three shards were not touched
    assert Shard(rebuilt).attrs["n_clips"] == 3


def test_other_settings_are_refused_then_forced(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 1)}).parent
    out = tmp_path / "out"
    prep(raw, out)
    before = mtimes(out)
    with pytest.raises(StaleShard, match=r"n_mels: 128 -> 64.*--force"):
        prep(raw, out, n_mels=64)
    assert mtimes(out) == before  # nothing touched, nothing mixed
    assert {Shard(p).attrs["n_mels"] for p in before} == {128}
    summary = prep(raw, out, force=True, n_mels=64)
    assert len(summary.shards_written) == 2
    for path in before:
        shard = Shard(path)
        assert shard.attrs["n_mels"] == 64 and shard.file["logmel"].shape[1] == 64
        assert shard.fingerprint == FeatureConfig(n_mels=64).fingerprint()
    # and now the 64-mel cache is the up-to-date one
    assert len(prep(raw, out, n_mels=64).shards_skipped) == 2


def test_cli_refuses_other_settings_with_a_clear_message(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 1)}).parent
    out = tmp_path / "out"
    args = ["--raw-dir", str(raw), "--out-dir", str(out), "--jobs", "1", "--quiet"]
    runner = CliRunner()
    first = runner.invoke(prep_command, args)
    assert first.exit_code == 0, first.output
    assert "3 clips -> 6 segments" in first.output and "inspect" in first.output
    again = runner.invoke(prep_command, args)
    assert again.exit_code == 0 and "skipped (up to date) 2" in again.output
    refused = runner.invoke(prep_command, [*args, "--n-mels", "64"])
    assert refused.exit_code != 0
    assert "error:" in refused.stderr and "other settings" in refused.stderr
    assert "n_mels: 128 -> 64" in refused.stderr and "--force" in refused.stderr
    forced = runner.invoke(prep_command, [*args, "--n-mels", "64", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "shards written 2" in forced.output


def test_raw_dir_pointing_at_one_machine(tmp_path: Path) -> None:
    machine = build_dataset(tmp_path / "raw", {"slider": (2, 1)}) / "slider"
    summary = prep(machine, tmp_path / "out")
    assert summary.clips == 3 and len(summary.shards_written) == 2
    path = shard_path(tmp_path / "out", ".", "slider", "train")
    assert Shard(path).machine == "slider"
    assert_shard_matches_sources(path, machine)


def test_cli_without_clips_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(prep_command, ["--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                                               "--jobs", "1", "--quiet"])
    assert result.exit_code == 2 and "no DCASE-style clips" in result.stderr


def test_data_prep_entry_script_runs(tmp_path: Path) -> None:
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (1, 1)}).parent
    out = tmp_path / "out"
    script = PROJECT_ROOT / "source" / "data_prep.py"
    done = subprocess.run([sys.executable, str(script), "--raw-dir", str(raw), "--out-dir", str(out),
                           "--jobs", "1", "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(find_shards(out)) == 2


# ---------------------------------------------------------------------------------------------------
# a run killed half way

KILL_AFTER_FIRST_BATCH = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from asd.cache.writer import ShardWriter
    from asd.cache.build import PrepConfig, run_prep

    real_add_clips = ShardWriter.add_clips

    def add_then_die(self, clips, segments):
        real_add_clips(self, clips, segments)
        self.file.flush()  # the partial file really holds a batch when the process dies
        os.kill(os.getpid(), signal.SIGKILL)

    ShardWriter.add_clips = add_then_die
    run_prep(PrepConfig(raw_dir=sys.argv[1], out_dir=sys.argv[2], jobs=1), show_progress=False)
""")


def test_killed_run_leaves_no_valid_looking_shard(tmp_path: Path) -> None:
    n_clips = CLIPS_PER_TASK + 4  # more than one batch
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (n_clips, 0)}, seconds=1.0).parent
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_BATCH, str(raw), str(out),
                           str(PROJECT_ROOT / "source")], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    final = shard_path(out, "ds", "fan", "train")
    partials = list(final.parent.glob(".*.partial"))
    assert len(partials) == 1  # the batch was written, under the temporary name only
    if final.exists():  # never expected; if it is there it must not pass as complete
        with pytest.raises((StaleShard, OSError)):
            Shard(final)
    with pytest.raises((StaleShard, OSError)):
        Shard(partials[0])
    assert find_shards(out) == []

    summary = prep(raw, out)
    assert summary.shards_written == [str(final)]
    assert Shard(final).attrs["n_clips"] == n_clips
    assert list(final.parent.glob(".*.partial")) == []  # the dead run's leftover is cleaned up
    assert_shard_matches_sources(final, raw)


def test_writer_exception_removes_its_partial(tmp_path: Path) -> None:
    final = tmp_path / "m" / "train.h5"
    with pytest.raises(RuntimeError), ShardWriter(final, FeatureConfig(), {"machine": "m"}) as writer:
        assert writer.tmp_path.exists()
        raise RuntimeError("boom")
    assert not final.exists() and list(final.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# bad and unusual input


def _odd_name(number: int, what: str) -> str:
    return f"section_00_source_train_normal_{number:04d}_{what}.wav"


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PrepSummary, dict[str, np.ndarray]]:
    """One machine whose train folder holds one file of every awkward kind, prepared once."""
    raw = tmp_path_factory.mktemp("oddraw")
    folder = raw / "odd" / "train"
    written = {
        "good": write_wav(folder / _odd_name(1, "good"), seconds=2.0, seed=1),
        "short": write_wav(folder / _odd_name(2, "short"), seconds=0.5, seed=2),
        "stereo": write_wav(folder / _odd_name(3, "stereo"), seconds=2.0, channels=2, seed=3),
        "rate44k": write_wav(folder / _odd_name(4, "rate44k"), seconds=2.0, rate=44100, seed=4),
        "float": write_wav(folder / _odd_name(5, "float"), seconds=2.0, subtype="FLOAT", seed=5),
        "pcm24": write_wav(folder / _odd_name(6, "pcm24"), seconds=2.0, subtype="PCM_24", seed=6),
    }
    (folder / _odd_name(7, "corrupt")).write_bytes(np.random.default_rng(7).bytes(4096))
    sf.write(folder / _odd_name(8, "empty"), np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    (folder / "not_a_dcase_name.wav").write_bytes(b"")
    out = tmp_path_factory.mktemp("oddout")
    return raw, out, prep(raw, out), written


def _clip(out: Path, what: str) -> tuple[Shard, dict]:
    shard = Shard(shard_path(out, ".", "odd", "train"))
    clips = shard.clips
    index = int(np.flatnonzero(clips["attributes"] == what)[0])
    return shard, {**clips.iloc[index].to_dict(), "index": index}


def test_bad_files_are_reported_and_the_rest_written(odd) -> None:
    raw, out, summary, written = odd
    reasons = {Path(f.path).name: f.reason for f in summary.files_skipped}
    assert set(reasons) == {_odd_name(7, "corrupt"), _odd_name(8, "empty"), "not_a_dcase_name.wav"}
    assert "unreadable audio" in reasons[_odd_name(7, "corrupt")]
    assert "empty audio file" in reasons[_odd_name(8, "empty")]
    assert "not a DCASE Task 2 name" in reasons["not_a_dcase_name.wav"]
    assert summary.clips == len(written) == Shard(shard_path(out, ".", "odd", "train")).attrs["n_clips"]
    assert any("files skipped: 3" in line for line in summary.lines())


def test_short_clip_is_one_padded_segment(odd) -> None:
    _, out, summary, written = odd
    shard, clip = _clip(out, "short")
    assert clip["n_segments"] == 1 and clip["n_samples"] == 8000
    assert clip["notes"] == "padded 8000->16000 samples"
    wave = shard.waveform(shard.clip_segments(clip["index"]))[0]
    np.testing.assert_array_equal(wave[:8000], written["short"])
    assert not wave[8000:].any()
    assert summary.notes["padded"] == 1


def test_stereo_keeps_the_left_channel_by_default(odd) -> None:
    _, out, summary, written = odd
    shard, clip = _clip(out, "stereo")
    assert clip["notes"] == "2ch->left" and clip["original_channels"] == 2
    waves = shard.waveform(shard.clip_segments(clip["index"]))
    np.testing.assert_array_equal(waves.reshape(-1), written["stereo"][:, 0])
    assert summary.notes["2ch->left"] == 1


def test_stereo_right_channel_on_request(tmp_path: Path) -> None:
    written = write_wav(tmp_path / "raw" / "m" / "train" / _odd_name(1, "st"), seconds=2.0, channels=2)
    summary = prep(tmp_path / "raw", tmp_path / "out", channel="right")
    shard = Shard(shard_path(tmp_path / "out", ".", "m", "train"))
    np.testing.assert_array_equal(shard.waveform(slice(None)).reshape(-1), written[:, 1])
    assert shard.clips.at[0, "notes"] == "2ch->right" and shard.attrs["channel"] == "right"
    assert summary.notes == {"2ch->right": 1}


def test_44k1_clip_is_resampled(odd) -> None:
    _, out, _, _ = odd
    shard, clip = _clip(out, "rate44k")
    assert abs(clip["n_samples"] - 32000) <= 1
    assert clip["original_sample_rate"] == 44100
    assert clip["notes"] == "resampled 44100->16000"
    assert clip["n_segments"] == 2


@pytest.mark.parametrize(("what", "subtype"), [("float", "FLOAT"), ("pcm24", "PCM_24")])
def test_float_and_24_bit_are_converted_with_a_note(odd, what: str, subtype: str) -> None:
    _, out, _, written = odd
    shard, clip = _clip(out, what)
    assert clip["notes"] == f"converted from {subtype}"
    waves = shard.waveform(shard.clip_segments(clip["index"])).reshape(-1).astype(np.float64)
    assert np.abs(waves - written[what] * 32768.0).max() <= 1.0


@pytest.mark.parametrize(("tail", "starts", "note"), [
    ("last", [0, 16000, 24000], ""),
    ("pad", [0, 16000, 32000], "padded 40000->48000 samples"),
    ("drop", [0, 16000], ""),
])
def test_tail_policies_end_to_end(tmp_path: Path, tail: str, starts: list[int], note: str) -> None:
    written = write_wav(tmp_path / "raw" / "m" / "train" / _odd_name(1, "x"), seconds=2.5)
    prep(tmp_path / "raw", tmp_path / "out", tail=tail)
    shard = Shard(shard_path(tmp_path / "out", ".", "m", "train"))
    assert shard.segments["start_sample"].tolist() == starts
    assert shard.clips.at[0, "n_segments"] == len(starts) and shard.clips.at[0, "notes"] == note
    assert shard.attrs["tail"] == tail
    padded = np.concatenate([written, np.zeros(8000, dtype=np.int16)])
    waves = shard.waveform(slice(None))
    for wave, start in zip(waves, starts, strict=True):
        np.testing.assert_array_equal(wave, padded[start:start + 16000])


def test_machine_with_only_bad_files_writes_no_shard(tmp_path: Path) -> None:
    write_wav(tmp_path / "raw" / "ok" / "train" / _odd_name(1, "x"), seconds=1.0)
    bad = tmp_path / "raw" / "bad" / "train" / _odd_name(1, "x")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"RIFF....garbage")
    summary = prep(tmp_path / "raw", tmp_path / "out")
    assert [Path(p).parent.name for p in summary.shards_written] == ["ok"]
    assert not shard_path(tmp_path / "out", ".", "bad", "train").exists()
    assert any("no usable clip" in f.reason for f in summary.files_skipped)


# ---------------------------------------------------------------------------------------------------
# the real recordings


@requires_real
def test_real_recordings_prep_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prep(REAL_ROOT, out, jobs=2)
    assert summary.clips == 33 and summary.files_skipped == []
    shards = find_shards(out)
    assert len(shards) == 14 and sorted(summary.shards_written) == [str(p) for p in shards]
    for path in shards:
        assert_shard_matches_sources(path, REAL_ROOT)
        clips = Shard(path).clips
        assert set(clips["notes"]) == {""}  # 16 kHz 16-bit mono: nothing to convert
        seconds = 12 if path.parent.name == "ToyTrain" else 10
        assert set(clips["n_segments"]) == {seconds}
    test = Shard(shard_path(out, "dcase2023t2", "valve", "test")).clips
    assert sorted(test["label"]) == ["anomaly", "normal"] and set(test["domain"]) == {"target"}
    old = Shard(shard_path(out, "dcase2020t2", "unidentified_machine", "train"))
    assert old.attrs["n_clips"] == 8 and set(old.clips["section"]) == {"00"}
    assert len(prep(REAL_ROOT, out, jobs=2).shards_skipped) == 14


def test_old_schema_cache_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """A cache from before the whole-clip log-mel (schema 1) is neither reused nor read."""
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 0)}).parent
    out = tmp_path / "out"
    prep(raw, out)
    path = shard_path(out, "ds", "fan", "train")
    with h5py.File(path, "r+") as file:
        file.attrs["schema_version"] = 1
        file.attrs["fingerprint"] = "0123456789abcdef"
    before = mtimes(out)
    with pytest.raises(StaleShard, match=r"shard schema 1, this version writes 3.*--force"):
        prep(raw, out)
    with pytest.raises(StaleShard, match="schema version 1"):
        Shard(path)
    assert mtimes(out) == before
    assert prep(raw, out, force=True).shards_written == [str(path)]
    assert_shard_matches_sources(path, raw)


def test_build_shard_alone_writes_what_run_prep_writes(tmp_path: Path) -> None:
    """The one-shard entry point (a distributed worker's unit of work) gives the same shard."""
    from joblib import Parallel
    from tqdm.auto import tqdm

    from asd.cache.build import build_shard, plan_shards
    from asd.dataset.layout import scan_raw_records

    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (3, 0)}).parent
    cfg = PrepConfig(raw_dir=str(raw), out_dir=str(tmp_path / "alone"), jobs=1)
    (path, clips, digest), = list(plan_shards(scan_raw_records(raw)[0], cfg))
    summary = PrepSummary()
    with tqdm(disable=True) as bar:
        build_shard(path, clips, digest, cfg, summary, Parallel(n_jobs=1, return_as="generator"), bar)
    assert summary.shards_written == [str(path)] and summary.clips == 3 and not summary.shards_failed
    assert_shard_matches_sources(path, raw)
