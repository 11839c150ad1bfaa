"""`evaluate` / `test --ground-truth`: evaluation-set figures from official-format ground truth.

A labelled synthetic dataset is run once; its test clips are then renamed to evaluation names (no label,
no domain) in shuffled order, with ground-truth files in the official evaluator's layout. Training data
and seed are the same, so the evaluation-set figures must equal the labelled run's figures exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cli import main
from asd.evaluation.ground_truth import EvaluationError, evaluate_folder, jackknife, load_ground_truth
from asd.evaluation.metrics import auc_or_nan

MACHINES = ["fan", "valve"]


@pytest.fixture(scope="module")
def runs(synth_set, gmm_run, tmp_path_factory) -> dict[str, Path]:
    """The session's labelled run, and an evaluation-set copy of its data: the same training clips, the test
    clips renamed section_00_NNNN.wav in shuffled order, with the official ground-truth files."""
    base = tmp_path_factory.mktemp("evaluate")
    raw = synth_set["raw"] / "synth"
    eval_raw, gt = base / "raw_eval" / "synth", base / "gt"
    rng = np.random.default_rng(0)
    for machine in MACHINES:
        shutil.copytree(raw / machine / "train", eval_raw / machine / "train")
        (eval_raw / machine / "test").mkdir(parents=True)
        tests = sorted((raw / machine / "test").glob("*.wav"))
        rows = []
        for i, k in enumerate(rng.permutation(len(tests))):
            eval_name = f"section_00_{i:04d}.wav"
            shutil.copy(tests[k], eval_raw / machine / "test" / eval_name)
            rows.append((eval_name, tests[k].stem))
        for folder, value in (("ground_truth_data", lambda n: int("_anomaly_" in n)),
                              ("ground_truth_domain", lambda n: int("_target_" in n)),
                              ("ground_truth_attributes", lambda n: n)):
            (gt / folder).mkdir(parents=True, exist_ok=True)
            (gt / folder / f"ground_truth_{machine}_section_00_test.csv").write_text(
                "".join(f"{e},{value(n)}\n" for e, n in rows))
    run_prep(PrepConfig(raw_dir=str(base / "raw_eval"), out_dir=str(base / "proc_eval"), jobs=1),
             show_progress=False)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--processed-dir", str(base / "proc_eval" / "synth"), "--output-dir",
                                  str(base / "eval")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["test", "--run", str(base / "eval"), "--ground-truth", str(gt)])
    assert result.exit_code == 0, result.output
    assert "official score:" in result.output and "95 % jackknife CI" in result.output
    return {"base": base, "gt": gt, "labelled": gmm_run[0], "eval": base / "eval"}


def _official(path: Path) -> dict[str, str]:
    table = pd.read_csv(path, dtype=str)
    return dict(zip(table["metric"], table["value"], strict=True))


def test_eval_run_figures_equal_the_labelled_run_to_the_digit(runs):
    labelled = pd.read_csv(runs["labelled"] / "synth" / "summary.csv", dtype={"section": str})
    evaluated = pd.read_csv(runs["eval"] / "synth" / "evaluation" / "summary.csv", dtype={"section": str})
    for column in ("AUC (source)", "AUC (target)", "pAUC", "precision (source)", "F1 score (target)"):
        assert evaluated[column].tolist() == labelled[column].tolist(), column
    ours, theirs = _official(runs["eval"] / "synth" / "evaluation" / "official_score.csv"), \
        _official(runs["labelled"] / "synth" / "official_score.csv")
    assert float(ours["official score"]) == float(theirs["official score"])
    assert 0 < float(ours["official score ci95"]) < 0.5


def test_labelled_submission_and_shuffled_rows_give_the_same_result(runs, tmp_path):
    truth = load_ground_truth(runs["gt"])
    reference = evaluate_folder(runs["eval"] / "synth" / "submission", truth, with_ci=False)
    # The labelled run's files name clips by their labelled names: mapped through ground_truth_attributes.
    by_alias = evaluate_folder(runs["labelled"] / "synth" / "submission", truth, with_ci=False)
    assert by_alias.scores == reference.scores
    shuffled = tmp_path / "team_a"
    shuffled.mkdir()
    for path in (runs["eval"] / "synth" / "submission").glob("*.csv"):
        lines = path.read_text().splitlines()
        order = np.random.default_rng(1).permutation(len(lines))
        (shuffled / path.name).write_text("\n".join(lines[i] for i in order) + "\n")
    assert evaluate_folder(shuffled, truth, with_ci=False).scores == reference.scores


def test_mismatches_are_reported_precisely(runs, tmp_path):
    truth = load_ground_truth(runs["gt"])
    team = tmp_path / "team_b"
    shutil.copytree(runs["eval"] / "synth" / "submission", team)
    (team / "decision_result_valve_section_00_test.csv").unlink()
    scores = team / "anomaly_score_fan_section_00_test.csv"
    lines = scores.read_text().splitlines()
    scores.write_text("\n".join(lines[1:] + [lines[2]]) + "\n")  # one clip missing, one twice
    (team / "anomaly_score_pump_section_00_test.csv").write_text("section_00_0000.wav,1.0\n")
    with pytest.raises(EvaluationError) as err:
        evaluate_folder(team, truth)
    message = str(err.value)
    assert "missing file decision_result_valve_section_00_test.csv" in message
    assert "anomaly_score_fan_section_00_test.csv: 1 clip(s) listed more than once, e.g. section_00_" in message
    assert "1 ground-truth clip(s) have no row" in message
    result = CliRunner().invoke(main, ["evaluate", "--ground-truth", str(runs["gt"]), str(team)])
    assert result.exit_code == 2 and "missing file" in result.output
    # A machine type without ground truth is reported and left out, not fatal.
    clean = tmp_path / "team_c"
    shutil.copytree(runs["eval"] / "synth" / "submission", clean)
    (clean / "anomaly_score_pump_section_00_test.csv").write_text("section_00_0000.wav,1.0\n")
    assert evaluate_folder(clean, truth, with_ci=False).notes == [
        "pump: no ground truth for this machine type; its files were left out"]


def test_jackknife_matches_its_definition():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 15)
    s = rng.normal(size=30) + y
    estimate, half_width = jackknife(auc_or_nan, y, s)
    loo = np.array([auc_or_nan(np.delete(y, i), np.delete(s, i)) for i in range(30)])
    theta = auc_or_nan(y, s)
    assert estimate == pytest.approx(30 * theta - 29 * loo.mean())
    import scipy.stats
    se = np.sqrt(((loo - loo.mean()) ** 2).sum() / (30 * 29))
    assert half_width == pytest.approx(scipy.stats.t.ppf(0.975, 29) * se)


def test_dcase2021_layout_gives_2021_rules(tmp_path):
    from asd.evaluation.metrics import dataset_score
    from asd.evaluation.submission import write_submission_files

    rng = np.random.default_rng(2)
    rows = []
    for section in ("03", "04"):
        for domain in ("source", "target"):
            for i in range(12):
                label = "anomaly" if i % 3 == 0 else "normal"
                rows.append({"file_name": f"section_{section}_{domain}_test_{i:04d}.wav", "machine": "pump",
                             "section": section, "domain": domain, "label": label,
                             "score": rng.normal() + (label == "anomaly"), "decision": int(rng.random() > 0.5)})
    predictions = pd.DataFrame(rows).assign(threshold=np.nan)
    write_submission_files(predictions, tmp_path / "team", "dcase2021")
    (tmp_path / "gt" / "ground_truth_data").mkdir(parents=True)
    for (section, domain), part in predictions.groupby(["section", "domain"]):
        gt_file = tmp_path / "gt" / "ground_truth_data" / f"ground_truth_pump_section_{section}_{domain}_test.csv"
        gt_file.write_text("".join(f"{n},{int(lab == 'anomaly')}\n"
                                   for n, lab in zip(part["file_name"], part["label"], strict=True)))
    truth = load_ground_truth(tmp_path / "gt")
    assert truth.rules == "dcase2021"
    ev = evaluate_folder(tmp_path / "team", truth, with_ci=False)
    assert ev.scores == dataset_score(predictions, "dcase2021")
