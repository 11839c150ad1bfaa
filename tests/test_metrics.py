"""Official metrics: checked against scikit-learn / scipy and against hand-computed values."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from asd.evaluation.metrics import (
    COLUMNS_2022,
    dataset_score,
    is_measurable,
    machine_results,
    metrics_table,
    official_score,
    precision_recall_f1,
    section_metrics,
)

EPS = sys.float_info.epsilon


def clips(machine: str, section: str, domain: str, label: str, scores, decisions=None) -> list[dict]:
    decisions = decisions if decisions is not None else [0] * len(scores)
    return [
        {"file_name": f"section_{section}_{domain}_test_{label}_{i:04d}_a.wav", "machine": machine,
         "section": section, "domain": domain, "label": label, "score": float(s), "threshold": 0.5,
         "decision": int(d)}
        for i, (s, d) in enumerate(zip(scores, decisions, strict=True))
    ]


def frame(*parts: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for part in parts for row in part])


def random_predictions(machines=("ToyCar", "bearing"), sections=("00", "01", "02"), n=12, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for m in machines:
        for sec in sections:
            for dom in ("source", "target"):
                for lab, shift in (("normal", 0.0), ("anomaly", 0.4)):
                    s = np.round(rng.random(n) + shift, 2)  # rounding creates ties
                    parts.append(clips(m, sec, dom, lab, s, (s > 0.8).astype(int)))
    return frame(*parts)


@pytest.fixture
def hand_section() -> pd.DataFrame:
    return frame(
        clips("fan", "00", "source", "normal", [0.1, 0.2, 0.3]),
        clips("fan", "00", "target", "normal", [0.5, 0.6]),
        clips("fan", "00", "source", "anomaly", [0.4, 0.9]),
        clips("fan", "00", "target", "anomaly", [0.25, 0.7]),
    )


def test_auc_source_counts_target_anomalies_too(hand_section: pd.DataFrame) -> None:
    m = section_metrics(hand_section, "dcase2022")
    # Source normals 0.1, 0.2, 0.3 vs anomalies 0.4, 0.9, 0.25, 0.7: 4 + 4 + 3 of 12 pairs.
    assert m["AUC (source)"] == pytest.approx(11 / 12)
    # Target normals 0.5, 0.6 are beaten by 0.9 and 0.7 only: 4 of 8 pairs.
    assert m["AUC (target)"] == pytest.approx(0.5)
    # With source anomalies only, AUC (source) would have been 1.0: the rule matters here.
    assert roc_auc_score([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.9]) == 1.0
    y = [0, 0, 0, 1, 1, 1, 1]
    assert m["AUC (source)"] == roc_auc_score(y, [0.1, 0.2, 0.3, 0.4, 0.9, 0.25, 0.7])


def test_pauc_pools_both_domains(hand_section: pd.DataFrame) -> None:
    m = section_metrics(hand_section, "dcase2022")
    y = (hand_section["label"] == "anomaly").astype(int)
    pooled = roc_auc_score(y, hand_section["score"], max_fpr=0.1)
    assert m["pAUC"] == pooled
    src = hand_section[hand_section["domain"] == "source"]
    assert m["pAUC (source)"] == roc_auc_score(src["label"] == "anomaly", src["score"], max_fpr=0.1)
    assert m["pAUC"] != m["pAUC (source)"]


def test_ties_match_sklearn() -> None:
    df = frame(clips("fan", "00", "source", "normal", [0.5, 0.5, 0.2]),
               clips("fan", "00", "source", "anomaly", [0.5, 0.8]),
               clips("fan", "00", "target", "normal", [0.8, 0.5]))
    m = section_metrics(df, "dcase2022")
    # 0.5 vs normals: two ties (1/2 each) and one win; 0.8: three wins -> 5/6.
    assert m["AUC (source)"] == pytest.approx(5 / 6)
    assert m["AUC (source)"] == roc_auc_score([0, 0, 0, 1, 1], [0.5, 0.5, 0.2, 0.5, 0.8])
    y, s = [0, 0, 0, 1, 1, 0, 0], [0.5, 0.5, 0.2, 0.5, 0.8, 0.8, 0.5]
    assert m["pAUC"] == roc_auc_score(y, s, max_fpr=0.1)


def test_precision_recall_f1_hand_example() -> None:
    df = frame(clips("fan", "00", "source", "normal", [0.1, 0.2, 0.9], [0, 0, 1]),
               clips("fan", "00", "source", "anomaly", [0.8, 0.7, 0.3], [1, 1, 0]),
               clips("fan", "00", "target", "normal", [0.1, 0.2], [0, 0]),
               clips("fan", "00", "target", "anomaly", [0.3, 0.4], [0, 0]))
    m = section_metrics(df, "dcase2022")
    # Source: tp = 2, fp = 1, fn = 1.
    assert m["precision (source)"] == pytest.approx(2 / 3)
    assert m["recall (source)"] == pytest.approx(2 / 3)
    assert m["F1 score (source)"] == pytest.approx(2 / 3)
    # Target: nothing flagged -> the evaluator's epsilon guards give 0, not an error.
    assert (m["precision (target)"], m["recall (target)"], m["F1 score (target)"]) == (0.0, 0.0, 0.0)


def test_precision_recall_f1_edge_cases() -> None:
    assert all(np.isnan(precision_recall_f1([], [])))
    p, r, f = precision_recall_f1([0, 0, 0], [1, 0, 0])  # no anomalies: recall undefined
    assert p == 0.0 and np.isnan(r) and np.isnan(f)
    assert all(np.isnan(precision_recall_f1([0, 1], [np.nan, 1])))


def test_undefined_values_are_nan_not_errors() -> None:
    no_anomaly = frame(clips("fan", "00", "source", "normal", [0.1, 0.2]),
                       clips("fan", "00", "target", "normal", [0.3]))
    m = section_metrics(no_anomaly, "dcase2022")
    assert np.isnan(m["AUC (source)"]) and np.isnan(m["AUC (target)"]) and np.isnan(m["pAUC"])
    no_target_normal = frame(clips("fan", "00", "source", "normal", [0.1, 0.2]),
                             clips("fan", "00", "source", "anomaly", [0.3]))
    m = section_metrics(no_target_normal, "dcase2022")
    assert m["AUC (source)"] == 1.0
    assert np.isnan(m["AUC (target)"])
    assert np.isnan(m["precision (target)"])


def test_unknown_labels_never_enter_metrics(hand_section: pd.DataFrame) -> None:
    noisy = pd.concat([hand_section, frame(clips("fan", "00", "source", "unknown", [5.0, -5.0]))])
    assert section_metrics(noisy, "dcase2022") == section_metrics(hand_section, "dcase2022")
    unlabelled = hand_section.assign(label="unknown")
    assert not is_measurable(unlabelled)
    assert all(np.isnan(v) for v in section_metrics(unlabelled, "dcase2022").values())
    assert np.isnan(dataset_score(unlabelled, "dcase2022")["official score"])


def test_official_score_is_floored_harmonic_mean() -> None:
    vals = [0.9, 0.8, 0.55, 0.7]
    assert official_score(vals) == scipy.stats.hmean(vals)
    with_zero = official_score([0.9, 0.0, 0.8])
    assert 0.0 < with_zero < 1e-10
    assert with_zero == scipy.stats.hmean(np.maximum([0.9, 0.0, 0.8], EPS))
    assert official_score([0.9, np.nan, 0.8]) == scipy.stats.hmean([0.9, 0.8])
    assert np.isnan(official_score([0.9, np.nan], nan_policy="propagate"))
    assert np.isnan(official_score([np.nan, np.nan]))
    assert np.isnan(official_score([]))


def test_dataset_score_2022_matches_evaluator_recipe() -> None:
    pred = random_predictions()
    got = dataset_score(pred, "dcase2022")
    src, tgt, pauc = [], [], []
    for m in sorted(pred["machine"].unique()):  # "ToyCar" < "bearing", as Python sorts
        for sec in sorted(pred["section"].unique()):
            p = pred[(pred["machine"] == m) & (pred["section"] == sec)]
            y = (p["label"] == "anomaly").to_numpy(int)
            for dom, out in (("source", src), ("target", tgt)):
                keep = ((p["domain"] == dom) | (p["label"] == "anomaly")).to_numpy()
                out.append(roc_auc_score(y[keep], p["score"].to_numpy()[keep]))
            pauc.append(roc_auc_score(y, p["score"], max_fpr=0.1))
    all_perf = np.array([src + tgt + pauc], dtype=float)  # shape (1, N) as in the evaluator
    assert got["official score"] == scipy.stats.hmean(np.maximum(all_perf, EPS), axis=None)
    assert got["arithmetic mean"] == np.mean(src + tgt)
    assert got["harmonic mean (source)"] == scipy.stats.hmean(np.maximum(src, EPS))
    assert got["n_values"] == 18 and got["n_missing"] == 0


def test_machine_results_layout_and_mean_rows() -> None:
    pred = random_predictions(machines=("fan",))
    table = machine_results(pred, "dcase2022")
    assert list(table.columns) == ["section", *COLUMNS_2022]
    assert table["section"].tolist() == ["00", "01", "02", "arithmetic mean", "harmonic mean"]
    body = table.iloc[:3][COLUMNS_2022].to_numpy(float)
    assert np.array_equal(table.iloc[3][COLUMNS_2022].to_numpy(float), np.mean(body, axis=0))
    assert np.array_equal(table.iloc[4][COLUMNS_2022].to_numpy(float),
                          scipy.stats.hmean(np.maximum(body, EPS), axis=0))
    with pytest.raises(ValueError, match="one machine"):
        machine_results(random_predictions(), "dcase2022")


def test_2021_rules_use_each_domains_own_clips(hand_section: pd.DataFrame) -> None:
    m = section_metrics(hand_section, "dcase2021")
    # Source test clips only: normals 0.1, 0.2, 0.3 vs anomalies 0.4, 0.9.
    assert m["AUC (source)"] == 1.0
    assert m["AUC (target)"] == roc_auc_score([0, 0, 1, 1], [0.5, 0.6, 0.25, 0.7])
    assert m["pAUC (target)"] == roc_auc_score([0, 0, 1, 1], [0.5, 0.6, 0.25, 0.7], max_fpr=0.1)
    assert "pAUC" not in m

    pred = random_predictions(machines=("fan", "pump"), sections=("00", "01"))
    table = machine_results(pred[pred["machine"] == "fan"], "dcase2021")
    assert list(table.columns) == ["section", "domain", "AUC", "pAUC", "precision", "recall", "F1 score"]
    assert table["domain"].tolist()[:4] == ["source", "source", "target", "target"]
    score = dataset_score(pred, "dcase2021")
    per = metrics_table(pred, "dcase2021")
    aucs = [v for m_ in ("fan", "pump") for d in ("source", "target")
            for v in per.loc[per["machine"] == m_, f"AUC ({d})"]]
    paucs = [v for m_ in ("fan", "pump") for d in ("source", "target")
             for v in per.loc[per["machine"] == m_, f"pAUC ({d})"]]
    assert score["official score"] == scipy.stats.hmean(aucs + paucs)
    rows = np.array([aucs, paucs]).T
    assert score["AUC (harmonic mean)"] == scipy.stats.hmean(np.maximum(rows, EPS), axis=0)[0]


def test_2020_rules_per_id_and_arithmetic_means() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for mid in ("00", "02", "04"):
        for lab, shift in (("normal", 0.0), ("anomaly", 0.3)):
            for i, s in enumerate(rng.random(15) + shift):
                rows.append({"file_name": f"{lab}_id_{mid}_{i:08d}.wav", "machine": "valve", "section": mid,
                             "domain": "unknown", "label": lab, "score": s, "threshold": 0.7,
                             "decision": int(s > 0.7)})
    pred = pd.DataFrame(rows)
    table = machine_results(pred, "dcase2020")
    assert list(table.columns)[:3] == ["id", "AUC", "pAUC"]
    aucs, paucs = [], []
    for mid in ("00", "02", "04"):
        p = pred[pred["section"] == mid]
        aucs.append(roc_auc_score(p["label"] == "anomaly", p["score"]))
        paucs.append(roc_auc_score(p["label"] == "anomaly", p["score"], max_fpr=0.1))
    assert table["AUC"].tolist()[:3] == aucs
    avg = np.mean(np.array([aucs, paucs]).T, axis=0)  # the 2020 evaluator's Average row
    score = dataset_score(pred, "dcase2020")
    assert score["valve AUC (average)"] == avg[0] and score["valve pAUC (average)"] == avg[1]
    assert score["AUC (arithmetic mean)"] == avg[0]
    assert score["official score"] == np.mean(aucs + paucs)
