"""Submission files, result tables and plots: official format, and an exact write/read/recompute loop."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asd.evaluation.metrics import dataset_score, machine_results, metrics_table
from asd.evaluation.submission import (
    domain_and_label,
    predictions_from_submission,
    read_submission_scores,
    recompute_from_submission,
    write_machine_result,
    write_submission_files,
    write_summary,
)
from asd.reports.plots import plot_loss_curve, plot_roc, plot_score_histograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_predictions(rules: str = "dcase2022", machines=("fan", "ToyCar"), sections=("00", "01"),
                     n: int = 9, seed: int = 0) -> pd.DataFrame:
    """Random scores (full double precision) for labelled clips of both domains, rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in machines:
        for sec in sections:
            threshold = float(rng.random() + 0.5)
            for dom in ("source", "target"):
                for lab, shift in (("normal", 0.0), ("anomaly", 0.5)):
                    for i in range(n):
                        if rules == "dcase2020":
                            name = f"{lab}_id_{sec}_{len(rows):08d}.wav"
                        else:
                            name = f"section_{sec}_{dom}_test_{lab}_{i:04d}_spd_{31 + i}V.wav"
                        score = float(rng.gamma(2.0) / 3 + shift)
                        rows.append({"file_name": name, "machine": m, "section": sec,
                                     "domain": "unknown" if rules == "dcase2020" else dom, "label": lab,
                                     "score": score, "threshold": threshold,
                                     "decision": int(score > threshold)})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_submission_files_have_official_format(tmp_path: Path) -> None:
    pred = make_predictions()
    paths = write_submission_files(pred, tmp_path, "dcase2022")
    expected = {f"{kind}_{m}_section_{s}_test.csv" for kind in ("anomaly_score", "decision_result")
                for m in ("fan", "ToyCar") for s in ("00", "01")}
    assert {p.name for p in paths} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected
    for m in ("fan", "ToyCar"):
        for s in ("00", "01"):
            part = pred[(pred["machine"] == m) & (pred["section"] == s)]
            scores = read_rows(tmp_path / f"anomaly_score_{m}_section_{s}_test.csv")
            decisions = read_rows(tmp_path / f"decision_result_{m}_section_{s}_test.csv")
            names = [r[0] for r in scores]
            assert names == sorted(part["file_name"])  # no header row, sorted by file name
            assert all(len(r) == 2 for r in scores + decisions)
            assert [r[0] for r in decisions] == names
            assert {r[1] for r in decisions} <= {"0", "1"}
            by_name = part.set_index("file_name")
            assert [float(r[1]) for r in scores] == by_name.loc[names, "score"].tolist()  # exact
            assert [int(r[1]) for r in decisions] == by_name.loc[names, "decision"].tolist()
    back = read_submission_scores(tmp_path / "anomaly_score_fan_section_00_test.csv")
    assert list(back.columns) == ["file_name", "score"] and back["score"].dtype == np.float64


@pytest.mark.parametrize("rules", ["dcase2022", "dcase2021", "dcase2020"])
def test_round_trip_recomputes_result_csv_exactly(tmp_path: Path, rules: str) -> None:
    pred = make_predictions(rules)
    write_submission_files(pred, tmp_path / "sub", rules)
    recomputed = recompute_from_submission(tmp_path / "sub", rules)
    rebuilt = predictions_from_submission(tmp_path / "sub", rules)
    assert len(rebuilt) == len(pred)
    for machine in ("fan", "ToyCar"):
        of_machine = pred[pred["machine"] == machine]
        result_path = write_machine_result(of_machine, tmp_path / machine / "result.csv", rules)
        rows = read_rows(result_path)
        header, body = rows[0], rows[1:]
        # The written result.csv is exactly what recomputation from the submission files gives.
        again = machine_results(rebuilt[rebuilt["machine"] == machine], rules)
        assert header == list(again.columns)
        assert len(body) == len(again)
        n_keys = 2 if rules == "dcase2021" else 1
        for row, (_, expect) in zip(body, again.iterrows(), strict=True):
            assert row[:n_keys] == [str(v) for v in expect.iloc[:n_keys]]
            for text, value in zip(row[n_keys:], expect.iloc[n_keys:], strict=True):
                assert same(float(text), float(value))
        # Section rows also agree with the per-section recomputation.
        rec = recomputed[recomputed["machine"] == machine]
        if rules == "dcase2022":
            for row in body[:2]:
                sec = rec[rec["section"] == row[0]].iloc[0]
                assert float(row[1]) == sec["AUC (source)"] and float(row[3]) == sec["pAUC"]
    assert dataset_score(rebuilt, rules)["official score"] == dataset_score(pred, rules)["official score"]


def test_2021_and_2020_file_names(tmp_path: Path) -> None:
    names21 = {p.name for p in write_submission_files(make_predictions("dcase2021"), tmp_path / "a",
                                                      "dcase2021")}
    assert "anomaly_score_fan_section_00_source_test.csv" in names21
    assert "decision_result_ToyCar_section_01_target_test.csv" in names21
    assert len(names21) == 2 * 2 * 2 * 2
    names20 = {p.name for p in write_submission_files(make_predictions("dcase2020"), tmp_path / "b",
                                                      "dcase2020")}
    assert names20 == {f"{k}_{m}_id_{s}.csv" for k in ("anomaly_score", "decision_result")
                       for m in ("fan", "ToyCar") for s in ("00", "01")}


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    pred = make_predictions()
    with pytest.raises(ValueError, match="unknown domain"):
        write_submission_files(pred.assign(domain="unknown"), tmp_path, "dcase2021")
    with pytest.raises(ValueError, match="0 or 1"):
        write_submission_files(pred.assign(decision=2), tmp_path, "dcase2022")
    with pytest.raises(ValueError, match="rules"):
        write_submission_files(pred, tmp_path, "dcase2019")


def test_domain_and_label() -> None:
    assert domain_and_label("section_00_source_test_anomaly_0003_spd_31V.wav") == ("source", "anomaly")
    assert domain_and_label("section_01_target_test_normal_0009_.wav") == ("target", "normal")
    assert domain_and_label("anomaly_id_02_00000012.wav") == ("source", "anomaly")  # 2020: one domain
    assert domain_and_label("id_05_00000000.wav") == ("source", "unknown")
    assert domain_and_label("section_00_0001.wav") == ("unknown", "unknown")
    assert domain_and_label("recording_7.wav") == ("unknown", "unknown")


def test_summary_tables(tmp_path: Path) -> None:
    pred = make_predictions()
    scores = write_summary(pred, tmp_path / "summary.csv", tmp_path / "official_score.csv", "dcase2022")
    summary = pd.read_csv(tmp_path / "summary.csv", dtype={"section": str})
    expected = metrics_table(pred, "dcase2022")
    assert len(summary) == 4
    pd.testing.assert_frame_equal(summary, expected, check_exact=True, check_dtype=False)
    official = dict(read_rows(tmp_path / "official_score.csv")[1:])
    assert official["rules"] == "dcase2022"
    assert float(official["official score"]) == scores["official score"]
    assert scores["official score"] == dataset_score(pred, "dcase2022")["official score"]



def test_unlabelled_summary_is_not_measurable(tmp_path: Path) -> None:
    scores = write_summary(make_predictions().assign(label="unknown"), tmp_path / "summary.csv",
                           tmp_path / "official_score.csv", "dcase2022")
    assert math.isnan(scores["official score"]) and scores["n_values"] == 0


def assert_png(path: Path | None) -> None:
    assert path is not None and path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_pngs(tmp_path: Path) -> None:
    fan = make_predictions(machines=("fan",))
    assert_png(plot_roc(fan, tmp_path / "roc.png"))
    assert_png(plot_score_histograms(fan, tmp_path / "hist.png"))
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e} for e in range(1, 6)]
    assert_png(plot_loss_curve(history, tmp_path / "loss.png"))
    assert_png(plot_loss_curve(([3.0, 2.0, 1.5], [3.2, 2.4, 2.0]), tmp_path / "loss2.png"))
    assert_png(plot_loss_curve({"train": [1.0, 0.5]}, tmp_path / "loss3.png"))


def test_plots_skip_when_nothing_to_plot(tmp_path: Path) -> None:
    unlabelled = make_predictions(machines=("fan",)).assign(label="unknown")
    assert plot_roc(unlabelled, tmp_path / "roc.png") is None
    assert not (tmp_path / "roc.png").exists()
    # Unlabelled scores can still be looked at.
    assert_png(plot_score_histograms(unlabelled, tmp_path / "hist.png"))
    assert plot_score_histograms(unlabelled.assign(score=np.nan), tmp_path / "none.png") is None
    assert plot_loss_curve([], tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()
