"""End to end: synthetic data -> data_prep -> `python source/main.py` -> official files, metrics, pages.

The session's dataset and its two finished runs (conftest: `synth_set`, `gmm_run`, `ae_run`) are made once,
through the real entry scripts; the tests here read them, and copy before they change anything.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig
from asd.cache.shard import Shard
from asd.cli import main
from asd.evaluation.submission import read_submission_decisions, recompute_from_submission
from asd.models.base import FingerprintMismatch
from asd.models.checkpoint import load_detector
from conftest import SYNTH_MACHINES, run_script


def test_run_writes_every_output(gmm_run, ae_run) -> None:
    for (run_dir, done), plots in ((gmm_run, ()), (ae_run, ("loss.png",))):
        for name in ("config.json", "config.yaml", "thresholds.csv", "predictions.csv", "summary.txt",
                     "report.html", "synth/summary.csv", "synth/official_score.csv"):
            assert (run_dir / name).is_file(), name
        for machine in SYNTH_MACHINES:
            folder = run_dir / "synth" / machine
            for name in ("model.pt", "task.json", "train.log", "result.csv", "roc.png", "score_histogram.png",
                         *plots):
                assert (folder / name).stat().st_size > 0, f"{machine}/{name}"
            for kind in ("anomaly_score", "decision_result"):
                rows = pd.read_csv(run_dir / "synth" / "submission" / f"{kind}_{machine}_section_00_test.csv",
                                   header=None, names=["file_name", "value"])
                assert rows["file_name"].is_monotonic_increasing and rows["file_name"].str.endswith(".wav").all()
                if kind == "decision_result":
                    assert set(rows["value"]) <= {0, 1}
        assert "official score" in done.stdout
    assert not (gmm_run[0] / "synth" / "fan" / "loss.png").exists()  # gmm trains no network: no loss curve


def test_default_model_beats_chance(default_run) -> None:
    table = pd.read_csv(default_run[0] / "synth" / "summary.csv")
    assert table["AUC (source)"].mean() > 0.7 and table["pAUC"].mean() > 0.55


def test_the_default_is_gmm_alone_on_a_small_set(default_run, gmm_run) -> None:
    """`auto` adds `embed` only from 500 training clips per machine type: on this set it is `gmm`, to the
    digit, and nothing is learned for the whole dataset."""
    config = json.loads((default_run[0] / "config.json").read_text())["run"]
    assert config["model"] == "auto"
    ours, theirs = (pd.read_csv(run[0] / "predictions.csv") for run in (default_run, gmm_run))
    pd.testing.assert_frame_equal(ours, theirs)
    from asd.models.checkpoint import load_detector

    detector = load_detector(default_run[0] / "synth" / "fan" / "model.pt")
    assert [m.name for m in detector.members_] == ["gmm"]
    assert not list(default_run[0].rglob("shared_train.log"))
    assert "embed joins from 500; gmm alone" in (default_run[0] / "synth" / "fan" / "train.log").read_text()


def test_submission_files_reproduce_result_csv(gmm_run) -> None:
    run_dir = gmm_run[0]
    recomputed = recompute_from_submission(run_dir / "synth" / "submission", "dcase2022")
    summary = pd.read_csv(run_dir / "synth" / "summary.csv", dtype={"section": str})
    for column in ("AUC (source)", "AUC (target)", "pAUC"):
        ours = summary.set_index(["machine", "section"])[column].sort_index()
        again = recomputed.astype({"section": str}).set_index(["machine", "section"])[column].sort_index()
        np.testing.assert_array_equal(ours.to_numpy(), again.to_numpy())


def test_thresholds_come_from_normal_clips_and_are_saved(gmm_run) -> None:
    run_dir = gmm_run[0]
    thresholds = pd.read_csv(run_dir / "thresholds.csv", dtype={"section": str})
    assert set(thresholds["machine"]) == set(SYNTH_MACHINES)
    assert thresholds["fitted_on"].str.contains("out-of-fold normal clip scores").all()
    assert ((thresholds["false_alarm_low"] <= thresholds["expected_false_alarm_rate"])
            & (thresholds["expected_false_alarm_rate"] <= thresholds["false_alarm_high"])).all()
    detector = load_detector(run_dir / "synth" / "fan" / "model.pt")
    oof = pd.read_csv(run_dir / "synth" / "fan" / "oof_scores.csv", dtype={"section": str})
    assert oof.equals(detector.decision_scores_) and (run_dir / "synth" / "fan" / "oof_scores.png").is_file()
    row = thresholds[(thresholds["machine"] == "fan") & (thresholds["section"] == "00")
                     & (thresholds["domain"] == "source")]
    assert detector.thresholds_["00/source"]["value"] == pytest.approx(float(row["threshold"].iloc[0]))
    # predictions.csv and the official decision file say the same, each clip against the saved threshold
    # of its section and domain
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"section": str})
    fan = predictions[predictions["machine"] == "fan"].set_index("file_name")
    expected = [detector.threshold_for(s, d) for s, d in zip(fan["section"], fan["domain"], strict=True)]
    np.testing.assert_array_equal(fan["threshold"].to_numpy(), expected)
    official = read_submission_decisions(run_dir / "synth" / "submission" / "decision_result_fan_section_00_test.csv")
    assert official.set_index("file_name")["decision"].equals(fan.loc[official["file_name"], "decision"])
    assert 0 < fan["decision"].sum() < len(fan)


def test_predictions_keep_the_dataset_and_the_rules_are_named_for_what_they_are(gmm_run) -> None:
    run_dir, done = gmm_run
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns)[:2] == ["dataset", "file_name"] and set(predictions["dataset"]) == {"synth"}
    assert "dataset synth  (DCASE 2022-2026 rules," in done.stdout and "dcase2022 rules" not in done.stdout
    assert "official score (DCASE 2022-2026 rules)" in (run_dir / "summary.txt").read_text()


def test_the_run_records_its_configuration_once(gmm_run, ae_run) -> None:
    """config.json holds the run configuration the command line built, every model.pt the same one, and
    the run page lists only the settings that apply to the model (gmm trains no network)."""
    for run_dir, _ in (gmm_run, ae_run):
        config = json.loads((run_dir / "config.json").read_text())
        assert torch_load_run_config(run_dir / "synth" / "fan" / "model.pt") == config["run"]
        assert config["trained"] == ["synth/fan", "synth/valve"] and config["failed"] == {}
    gmm_config = json.loads((gmm_run[0] / "config.json").read_text())
    assert gmm_config["run"]["model"] == "gmm" and "epochs" not in gmm_config["applies"]
    page = (gmm_run[0] / "report.html").read_text()
    assert "model=gmm" in page and "epochs=" not in page and "patience=" not in page
    assert "epochs=2" in (ae_run[0] / "report.html").read_text()


def torch_load_run_config(path) -> dict:
    from asd.models.checkpoint import read_checkpoint

    return read_checkpoint(path)["run_config"]


def test_the_default_says_when_it_ignores_an_auxiliary_folder(synth_set, tmp_path) -> None:
    """On a small set `auto` learns nothing per dataset, so extra classes would be dropped in silence."""
    result = CliRunner().invoke(main, ["train", "--processed-dir", str(synth_set["processed"]), "--machines", "fan",
                                       "--aux-processed-dir", str(synth_set["processed"]),
                                       "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "warning: --aux-processed-dir is ignored: no machine type here has the training clips that auto's " \
           "learned members need" in result.stderr


def test_same_seed_same_scores(synth_set, default_run, tmp_path) -> None:
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(synth_set["processed"]), "--output-dir",
                                       str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "predictions.csv"),
                                  pd.read_csv(default_run[0] / "predictions.csv"))


def test_seeds_give_a_run_each_and_the_mean_and_sd(synth_set, default_run, tmp_path) -> None:
    result = CliRunner().invoke(main, ["--processed-dir", str(synth_set["processed"]), "--output-dir",
                                       str(tmp_path / "seeds"), "--seeds", "0,1", "--machines", "fan"])
    assert result.exit_code == 0, result.output
    seeds = pd.read_csv(tmp_path / "seeds" / "seeds.csv")
    assert list(seeds["seed"]) == [0, 1]
    mean, sd = seeds["official score"].mean(), seeds["official score"].std(ddof=1)
    assert f"official score of synth over seeds 0, 1: {mean:.4f} ± {sd:.4f}" in result.output
    for seed in (0, 1):
        folder = tmp_path / "seeds" / f"seed_{seed}"
        assert json.loads((folder / "config.json").read_text())["run"]["fit"]["seed"] == seed
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
        assert (folder / "report.html").is_file()
    # seed 0 is the reference run's seed: the same scores for its machine type
    reference = pd.read_csv(default_run[0] / "predictions.csv")
    seed0 = pd.read_csv(tmp_path / "seeds" / "seed_0" / "predictions.csv")
    np.testing.assert_array_equal(seed0["score"], reference[reference["machine"] == "fan"]["score"])


def test_embed_run_trains_one_network_for_the_dataset(synth_set, tmp_path) -> None:
    run_dir = tmp_path / "embed"
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(synth_set["processed"]), "--output-dir",
                                       str(run_dir), "--model", "embed", "--epochs", "1",
                                       "--model-option", "crops_per_clip=1", "--model-option", "aux_shifts=0,4",
                                       "--model-option", "crop_frames=32"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["run"]["model_options"] == {
        "crops_per_clip": 1, "aux_shifts": [0, 4], "crop_frames": 32}
    config = load_detector(run_dir / "synth" / "fan" / "model.pt").config
    assert config.crops_per_clip == 1 and config.aux_shifts == (0, 4)
    assert "synth: one network for its machine types" in result.output
    assert "one network for fan, valve" in (run_dir / "synth" / "shared_train.log").read_text()
    for machine in SYNTH_MACHINES:
        assert "trained for the whole dataset" in (run_dir / "synth" / machine / "train.log").read_text()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert set(predictions["machine"]) == set(SYNTH_MACHINES) and predictions["score"].notna().all()


def test_model_refuses_shard_of_other_features(synth_set, gmm_run, tmp_path) -> None:
    other = tmp_path / "processed64"
    run_prep(PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(other), jobs=1, machines=("fan",),
                        features=FeatureConfig(n_mels=64)), show_progress=False)
    detector = load_detector(gmm_run[0] / "synth" / "fan" / "model.pt")
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        detector.score_clips(Shard(other / "synth" / "fan" / "test.h5"))


def test_score_any_file_names(synth_set, gmm_run, tmp_path) -> None:
    run_dir = gmm_run[0]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    tests = sorted((synth_set["raw"] / "synth" / "fan" / "test").glob("*.wav"))
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


def test_score_refuses_another_reducer_than_the_thresholds_were_fitted_with(synth_set, gmm_run, tmp_path) -> None:
    wav = next((synth_set["raw"] / "synth" / "fan" / "test").glob("*.wav"))
    common = ["score", "--run", str(gmm_run[0]), "--machine", "fan", str(wav)]
    result = CliRunner().invoke(main, [*common, "--aggregate", "max", "--out", str(tmp_path / "max.csv")])
    assert result.exit_code == 2 and "fitted on clip scores reduced with 'mean'" in result.output
    assert not (tmp_path / "max.csv").exists()
    result = CliRunner().invoke(main, [*common, "--aggregate", "mean", "--out", str(tmp_path / "mean.csv")])
    assert result.exit_code == 0, result.output


def test_unlabelled_test_set_gets_scores_without_metrics(synth_set, tmp_path) -> None:
    raw = tmp_path / "raw_eval" / "synth" / "fan"
    shutil.copytree(synth_set["raw"] / "synth" / "fan" / "train", raw / "train")
    (raw / "test").mkdir()
    for i, wav in enumerate(sorted((synth_set["raw"] / "synth" / "fan" / "test").glob("*.wav"))):
        shutil.copy(wav, raw / "test" / f"section_00_{i + 1:04d}.wav")  # DCASE eval names: no label
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw_eval"), out_dir=str(tmp_path / "proc_eval"), jobs=1),
             show_progress=False)
    result = CliRunner().invoke(main, ["run", "--processed-dir", str(tmp_path / "proc_eval" / "synth"),
                                       "--output-dir", str(tmp_path / "run_eval")])
    assert result.exit_code == 0, result.output
    assert "not measurable (test labels unknown)" in result.output
    assert "expected false alarms" in result.output
    out = tmp_path / "run_eval" / "synth"
    scores = pd.read_csv(out / "submission" / "anomaly_score_fan_section_00_test.csv", header=None)
    assert len(scores) == len(list((raw / "test").glob("*.wav")))
    assert not (out / "fan" / "result.csv").exists()  # no invented metrics


def test_test_stage_alone_gives_the_same_files_and_summarize_keeps_earlier_pages(gmm_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(gmm_run[0], run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*.csv")}
    runner = CliRunner()
    result = runner.invoke(main, ["test", "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*.csv")}
    assert after == before  # the same predictions, summaries and official files, byte for byte
    first = runner.invoke(main, ["summarize", str(run_dir), str(run_dir)])
    assert first.exit_code == 0 and "official score" in first.output
    assert f"page: {tmp_path / 'compare.html'}" in first.output
    second = runner.invoke(main, ["summarize", str(run_dir), str(run_dir)])
    assert f"page: {tmp_path / 'compare-2.html'}" in second.output  # the earlier page is kept
    assert (tmp_path / "compare.html").is_file()
    third = runner.invoke(main, ["summarize", str(run_dir), "--html", str(tmp_path / "compare.html")])
    assert "replaced the page that was there" in third.output  # asked for by name: replaced, and said so


def test_missing_model_is_a_clear_error(gmm_run, tmp_path) -> None:
    result = CliRunner().invoke(main, ["score", "--run", str(gmm_run[0]), "--machine", "pump", str(tmp_path)])
    assert result.exit_code == 2 and "no trained model for machine type 'pump'" in result.output


def test_test_stage_on_a_folder_that_is_not_a_run(tmp_path) -> None:
    result = CliRunner().invoke(main, ["test", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run folder" in result.output


def test_messages_name_an_interpreter_that_works(tmp_path) -> None:
    """Advice to run data_prep names the project's interpreter: a bare `python` lacks the dependencies."""
    done = run_script("main.py", "train", "--processed-dir", tmp_path)
    assert done.returncode == 2
    assert "`.venv/bin/python source/data_prep.py`" in done.stderr and "`python source" not in done.stderr
