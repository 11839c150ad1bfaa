"""End to end: synthetic data -> data_prep -> `python source/main.py` -> official files and metrics."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.cli import main
from asd.dataset.synth import generate_dataset
from asd.evaluation.submission import recompute_from_submission
from asd.models.base import FingerprintMismatch, load_detector

ROOT = Path(__file__).resolve().parents[1]
MACHINES = ["fan", "valve"]


def _python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny two-machine dataset with loud anomalies, prepped through the real entry script."""
    base = tmp_path_factory.mktemp("pipeline")
    raw = base / "raw"
    generate_dataset(raw / "synth", seed=1, scale=0.04, machines=MACHINES, clip_seconds=3.0,
                     anomaly_strength=8.0, n_jobs=1)
    done = _python("source/data_prep.py", "--raw-dir", str(raw), "--out-dir", str(base / "processed"),
                   "--jobs", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    return {"base": base, "raw": raw, "processed": base / "processed" / "synth"}


@pytest.fixture(scope="module")
def finished_run(tiny) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tiny["base"] / "run"
    done = _python("source/main.py", "--help")
    assert done.returncode == 0 and "train" in done.stdout
    done = _python("source/main.py", "run", "--processed-dir", str(tiny["processed"]), "--output-dir",
                   str(run_dir), "--epochs", "60", "--model", "ae")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_run_writes_every_output(finished_run) -> None:
    run_dir, done = finished_run
    for name in ("config.json", "thresholds.csv", "predictions.csv", "summary.txt",
                 "synth/summary.csv", "synth/official_score.csv"):
        assert (run_dir / name).is_file(), name
    for machine in MACHINES:
        folder = run_dir / "synth" / machine
        for name in ("model.pt", "train.log", "loss.png", "result.csv", "roc.png", "score_histogram.png"):
            assert (folder / name).stat().st_size > 0, f"{machine}/{name}"
        for kind in ("anomaly_score", "decision_result"):
            rows = pd.read_csv(run_dir / "synth" / "submission" / f"{kind}_{machine}_section_00_test.csv",
                               header=None, names=["file_name", "value"])
            assert rows["file_name"].is_monotonic_increasing and rows["file_name"].str.endswith(".wav").all()
            if kind == "decision_result":
                assert set(rows["value"]) <= {0, 1}
    assert "official score" in done.stdout


def test_autoencoder_beats_chance(finished_run) -> None:
    run_dir, _ = finished_run
    table = pd.read_csv(run_dir / "synth" / "summary.csv")
    assert table["AUC (source)"].mean() > 0.6 and table["pAUC"].mean() > 0.5


def test_submission_files_reproduce_result_csv(finished_run) -> None:
    run_dir, _ = finished_run
    recomputed = recompute_from_submission(run_dir / "synth" / "submission", "dcase2022")
    summary = pd.read_csv(run_dir / "synth" / "summary.csv", dtype={"section": str})
    for column in ("AUC (source)", "AUC (target)", "pAUC"):
        ours = summary.set_index(["machine", "section"])[column].sort_index()
        again = recomputed.astype({"section": str}).set_index(["machine", "section"])[column].sort_index()
        np.testing.assert_array_equal(ours.to_numpy(), again.to_numpy())


def test_thresholds_come_from_normal_clips_and_are_saved(finished_run) -> None:
    run_dir, _ = finished_run
    thresholds = pd.read_csv(run_dir / "thresholds.csv", dtype={"section": str})
    assert set(thresholds["machine"]) == set(MACHINES)
    assert (thresholds["fitted_on"] == "held-out normal clips").all()
    detector = load_detector(run_dir / "synth" / "fan" / "model.pt")
    saved = detector.thresholds_["00"]["value"]
    row = thresholds[(thresholds["machine"] == "fan") & (thresholds["section"] == "00")]
    assert saved == pytest.approx(float(row["threshold"].iloc[0]))
    predictions = pd.read_csv(run_dir / "predictions.csv")
    fan = predictions[predictions["machine"] == "fan"]
    assert ((fan["score"] > fan["threshold"]).astype(int) == fan["decision"]).all()


def test_same_seed_same_scores(tiny, tmp_path) -> None:
    runner = CliRunner()
    scores = []
    for name in ("a", "b"):
        result = runner.invoke(main, ["run", "--processed-dir", str(tiny["processed"]), "--output-dir",
                                      str(tmp_path / name), "--epochs", "2", "--machines", "valve"])
        assert result.exit_code == 0, result.output
        scores.append(pd.read_csv(tmp_path / name / "predictions.csv")["score"].to_numpy())
    np.testing.assert_array_equal(scores[0], scores[1])


def test_embed_run_trains_one_network_for_the_dataset(tiny, tmp_path) -> None:
    run_dir = tmp_path / "embed"
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(tiny["processed"]), "--output-dir",
                                       str(run_dir), "--model", "embed", "--epochs", "1",
                                       "--model-option", "crops_per_clip=1", "--model-option", "aux_shifts=0,4"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads((run_dir / "config.json").read_text())["model_options"] == {"crops_per_clip": 1,
                                                                                    "aux_shifts": [0, 4]}
    config = load_detector(run_dir / "synth" / "fan" / "model.pt").config
    assert config.crops_per_clip == 1 and config.aux_shifts == (0, 4)
    assert "synth: one network for its machine types" in result.output
    assert "one network for fan, valve" in (run_dir / "synth" / "shared_train.log").read_text()
    for machine in MACHINES:
        assert "trained for the whole dataset" in (run_dir / "synth" / machine / "train.log").read_text()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert set(predictions["machine"]) == set(MACHINES) and predictions["score"].notna().all()


def test_model_refuses_shard_of_other_features(tiny, finished_run, tmp_path) -> None:
    run_dir, _ = finished_run
    other = tmp_path / "processed64"
    run_prep(PrepConfig(raw_dir=str(tiny["raw"]), out_dir=str(other), jobs=1, machines=("fan",),
                        features=FeatureConfig(n_mels=64)), show_progress=False)
    detector = load_detector(run_dir / "synth" / "fan" / "model.pt")
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        detector.score_clips(Shard(other / "synth" / "fan" / "test.h5"))


def test_score_any_file_names(tiny, finished_run, tmp_path) -> None:
    run_dir, _ = finished_run
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    tests = sorted((tiny["raw"] / "synth" / "fan" / "test").glob("*.wav"))
    for i, wav in enumerate(tests[:3]):
        shutil.copy(wav, inbox / f"pump_station_recording_{i}.wav")
    (inbox / "broken.wav").write_bytes(b"not audio at all")
    out_csv = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["score", "--run", str(run_dir), "--machine", "fan", "--out",
                                       str(out_csv), str(inbox)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out_csv)
    assert len(table) == 3 and set(table["decision"]) <= {0, 1}
    assert np.isfinite(table["score"]).all() and (table["threshold"] > 0).all()
    assert "3 files scored" in result.output


def test_unlabelled_test_set_gets_scores_without_metrics(tiny, finished_run, tmp_path) -> None:
    run_dir, _ = finished_run
    raw = tmp_path / "raw_eval" / "synth" / "fan"
    shutil.copytree(tiny["raw"] / "synth" / "fan" / "train", raw / "train")
    (raw / "test").mkdir()
    for i, wav in enumerate(sorted((tiny["raw"] / "synth" / "fan" / "test").glob("*.wav"))):
        shutil.copy(wav, raw / "test" / f"section_00_{i + 1:04d}.wav")  # DCASE eval names: no label
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw_eval"), out_dir=str(tmp_path / "proc_eval"), jobs=1),
             show_progress=False)
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(tmp_path / "proc_eval" / "synth"),
                                       "--output-dir", str(tmp_path / "run_eval"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "not measurable (test labels unknown)" in result.output
    assert "false-alarm rate" in result.output
    out = tmp_path / "run_eval" / "synth"
    scores = pd.read_csv(out / "submission" / "anomaly_score_fan_section_00_test.csv", header=None)
    assert len(scores) == len(list((raw / "test").glob("*.wav")))
    assert not (out / "fan" / "result.csv").exists()  # no invented metrics


def test_test_stage_alone_and_summarize(finished_run) -> None:
    run_dir, _ = finished_run
    runner = CliRunner()
    result = runner.invoke(main, ["test", "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["summarize", str(run_dir), str(run_dir)])
    assert result.exit_code == 0 and "official score" in result.output


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["score", "--run", str(tmp_path), "--machine", "fan", str(tmp_path)])
    assert result.exit_code == 2 and "no trained model" in result.output


def test_false_alarm_rate_is_measured_on_clips_the_threshold_did_not_see() -> None:
    from asd.engine.train import cross_fitted_false_alarm_rate
    from asd.models.base import TrainConfig

    train = TrainConfig(threshold_method="percentile", threshold_percentile=90.0)
    normal = np.random.default_rng(0).gamma(2.0, 1.0, 2000)
    assert cross_fitted_false_alarm_rate(normal, train, seed=0) == pytest.approx(0.10, abs=0.02)
    assert np.isnan(cross_fitted_false_alarm_rate(normal[:3], train, seed=0))
    # the four highest scores in one half, the lowest in the other: out-of-sample alarms are not 10%
    skewed = np.array([1.0, 1.1, 1.2, 1.3, 9.0, 9.1, 9.2, 9.3])
    assert cross_fitted_false_alarm_rate(skewed, train, seed=3) != pytest.approx(0.10, abs=0.05)


def test_test_stage_on_a_folder_that_is_not_a_run(tmp_path) -> None:
    result = CliRunner().invoke(main, ["test", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run folder" in result.output
