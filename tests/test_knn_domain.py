"""The embedding model's inputs and references: whole-clip log-mels rebuilt from the cache, crops and
windows, and the domain-aware nearest-neighbour banks whose out-of-fold distances calibrate the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asd.cache.audio import read_clip
from asd.cache.build import PrepConfig, run_prep
from asd.cache.features import FeatureConfig, clip_log_mel
from asd.cache.shard import Shard
from asd.models.calibration import DomainCalibration
from asd.models.clip_crops import fit_length, load_clip_frames, random_crops, windows
from asd.models.fold_networks import assign_folds
from asd.models.knn_domain import DomainBanks, interpolated_points, nearest_distance
from conftest import write_wav


def test_whole_clip_log_mel_is_rebuilt_exactly_from_the_cached_segments(tmp_path: Path) -> None:
    # 7.3 s: seven whole segments plus an end-aligned tail segment that overlaps the seventh.
    wav = tmp_path / "raw" / "fan" / "train" / "section_00_source_train_normal_0000_a_1.wav"
    write_wav(wav, seconds=7.3, seed=4)
    run_prep(PrepConfig(raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "out"), jobs=1), show_progress=False)
    shard = Shard(next((tmp_path / "out").rglob("train.h5")))
    assert shard.clips["n_segments"].iloc[0] == 8
    (frames,) = load_clip_frames(shard, np.array([0]), dtype=np.float32)
    expected = clip_log_mel(read_clip(str(wav), FeatureConfig()).samples, FeatureConfig())
    assert frames.shape == expected.shape
    np.testing.assert_allclose(frames, expected, rtol=1e-5, atol=1e-5)


def test_crops_wrap_short_clips_and_windows_cover_every_frame() -> None:
    clip = np.arange(10, dtype=np.float16)[None, :].repeat(3, axis=0)
    assert fit_length(clip, 4, start=5)[0].tolist() == [5, 6, 7, 8]
    assert fit_length(clip, 13)[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # repeated, no silence
    crops = random_crops([clip, clip[:, :3]], np.array([0, 1, 0]), 4, np.random.default_rng(0))
    assert crops.shape == (3, 3, 4) and crops.dtype == np.float32
    assert crops[1, 0].tolist() == [0, 1, 2, 0]
    for crop in crops[[0, 2]]:  # consecutive frames of the clip
        assert np.all(np.diff(crop[0]) == 1)
    cut = windows(clip, 4)
    assert [w[0, 0] for w in cut] == [0, 4, 6]  # the last window is aligned to the clip's end
    assert windows(clip, 0).shape == (1, 3, 10)


def _sphere(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    points = centre[None, :] + spread * rng.normal(size=(n, len(centre)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_nearest_distance_is_the_cosine_distance_to_the_closest_row() -> None:
    rng = np.random.default_rng(0)
    queries, bank = _sphere(rng, np.ones(5), 7, 1.0), _sphere(rng, np.ones(5), 9, 1.0)
    brute = [min(1 - float(q @ b) for b in bank) for q in queries]
    np.testing.assert_allclose(nearest_distance(queries, bank), brute, rtol=1e-6)
    leave_one_out = [min(1 - float(q @ b) for j, b in enumerate(queries) if j != i) for i, q in enumerate(queries)]
    np.testing.assert_allclose(nearest_distance(queries, queries, exclude_self=True), leave_one_out, rtol=1e-6)


@pytest.fixture(scope="module")
def two_domains() -> dict:
    """400 source clips around one direction, 6 target clips around another, in a 16-d embedding; banks
    on all of them, a calibration on their distances out of fold (two folds, stratified by domain)."""
    rng = np.random.default_rng(1)
    source_centre, target_centre = np.eye(16)[0], np.eye(16)[1]
    train = np.concatenate([_sphere(rng, source_centre, 400, 0.15), _sphere(rng, target_centre, 6, 0.15)])
    domains = np.array(["source"] * 400 + ["target"] * 6)
    sections = np.array(["00"] * len(train))
    banks = DomainBanks(n_source_centroids=16, seed=0).fit(train, sections, domains)
    folds = assign_folds(domains, 2, seed=0)
    raw_oof = np.empty((len(train), 2))
    for k in (0, 1):
        raw_oof[folds == k] = banks.held_out(train, sections, domains, folds == k)
    calibration = DomainCalibration(min_clips_for_sd=5).fit(raw_oof, sections, domains)
    test = {"source": _sphere(rng, source_centre, 200, 0.15), "target": _sphere(rng, target_centre, 200, 0.15),
            "far": _sphere(rng, np.eye(16)[2] + np.eye(16)[3], 50, 0.15)}
    return {"banks": banks, "calibration": calibration, "test": test, "train": train, "folds": folds,
            "raw_oof": raw_oof}


def test_source_bank_is_k_means_centroids_and_every_target_clip_is_kept(two_domains: dict) -> None:
    banks = two_domains["banks"]
    assert banks.banks_[("00", "source")].shape == (16, 16)
    assert banks.banks_[("00", "target")].shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(banks.banks_[("00", "source")], axis=1), 1.0, rtol=1e-5)
    assert banks.banks_[("*", "target")].shape == (6, 16)  # the pooled banks, for sections never trained


def test_held_out_distances_come_from_banks_without_those_clips(two_domains: dict) -> None:
    train, banks = two_domains["train"], two_domains["banks"]
    sections, domains = np.array(["00"] * len(train)), np.array(["source"] * 400 + ["target"] * 6)
    target = len(train) - 1  # a target clip, held out alone: the other five target clips are its bank
    only = np.zeros(len(train), bool)
    only[target] = True
    held = banks.held_out(train, sections, domains, only)
    expected = min(1 - float(train[target] @ train[j]) for j in range(400, 405))
    assert held[0, 1] == pytest.approx(expected, rel=1e-5)
    in_sample = banks.distances(train[[target]], np.array(["00"]))
    assert in_sample[0, 1] == pytest.approx(0.0, abs=1e-5)  # in its own bank it is its own neighbour
    assert held[0, 1] > 0.01
    # many held clips: dealt into ten chunks, each scored against banks without its chunk only, so a held
    # target clip still sees most other target clips (with two folds it would have lost half of them)
    rows = np.zeros(len(train), bool)
    rows[::2] = True
    rows[400:] = True
    chunked = banks.held_out(train, sections, domains, rows)
    assert chunked.shape == (rows.sum(), 2) and np.isfinite(chunked).all()
    assert (chunked[-6:, 1] > 0.0).all()  # never its own neighbour


def test_both_domains_normal_clips_land_on_one_scale(two_domains: dict) -> None:
    banks, calibration, test = two_domains["banks"], two_domains["calibration"], two_domains["test"]
    scores = {name: calibration.transform(banks.distances(points, np.array(["00"] * len(points))),
                                          np.array(["00"] * len(points))) for name, points in test.items()}
    # Raw distances to the six target clips are larger than to the sixteen centroids; calibrated, the two
    # domains' normal clips score alike, so one threshold serves both.
    raw_source = nearest_distance(test["source"], banks.banks_[("00", "source")])
    raw_target = nearest_distance(test["target"], banks.banks_[("00", "target")])
    assert np.median(raw_target) > 1.2 * np.median(raw_source)
    assert abs(np.median(scores["source"]) - np.median(scores["target"])) < 1.0
    assert scores["far"].min() > max(np.percentile(scores["source"], 99), np.percentile(scores["target"], 99))


def test_unknown_section_uses_all_training_clips_and_state_round_trips() -> None:
    rng = np.random.default_rng(2)
    train = np.concatenate([_sphere(rng, np.eye(8)[0], 30, 0.1), _sphere(rng, np.eye(8)[1], 30, 0.1)])
    sections = np.array(["00"] * 30 + ["01"] * 30)
    banks = DomainBanks(n_source_centroids=4).fit(train, sections, np.array(["source"] * 60))
    query = _sphere(rng, np.eye(8)[1], 5, 0.1)
    pooled = banks.distances(query, np.array(["07"] * 5))
    assert np.isinf(pooled[:, 1]).all()  # no target bank anywhere
    np.testing.assert_allclose(pooled, DomainBanks(4).fit(train, np.array(["x"] * 60), ["source"] * 60).distances(
        query, np.array(["x"] * 5)), rtol=1e-6)
    torch.save(banks.state(), buffer := __import__("io").BytesIO())
    buffer.seek(0)
    again = DomainBanks.from_state(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(again.distances(query, np.array(["01"] * 5)),
                                  banks.distances(query, np.array(["01"] * 5)))


def test_target_mixup_adds_points_between_target_clips_and_density_scaling_divides_by_local_spread() -> None:
    rng = np.random.default_rng(3)
    clips = _sphere(rng, np.eye(8)[0], 6, 0.3)
    extra = interpolated_points(clips, 4, np.random.default_rng(0))
    assert extra.shape == (24, 8)
    np.testing.assert_allclose(np.linalg.norm(extra, axis=1), 1.0, rtol=1e-5)
    # every synthetic point is at least as close to some clip as the two farthest clips are to each other
    assert (1 - extra @ clips.T).min(axis=1).max() <= (1 - clips @ clips.T).max()
    banks = DomainBanks(target_mixup=4).fit(clips, np.array(["00"] * 6), np.array(["target"] * 6))
    assert banks.banks_[("00", "target")].shape == (30, 8)
    # density: a tight cluster and a loose one; a query as far from each cluster's centre counts as nearer
    # to the loose one once distances are divided by the entries' local spread
    tight, loose = _sphere(rng, np.eye(8)[1], 20, 0.02), _sphere(rng, np.eye(8)[2], 20, 0.3)
    train = np.concatenate([tight, loose])
    scaled = DomainBanks(n_source_centroids=40, density_scaling=True).fit(
        train, np.array(["00"] * 40), np.array(["source"] * 40))
    scales = scaled.scales_[("00", "source")]
    assert np.median(scales[20:]) > 5 * np.median(scales[:20])
    queries = _unit_rows(np.stack([np.eye(8)[1] + 0.3 * np.eye(8)[3], np.eye(8)[2] + 0.3 * np.eye(8)[3]]))
    d = scaled.distances(queries, np.array(["00", "00"]))[:, 0]
    assert d[0] > d[1]
    again = DomainBanks.from_state(scaled.state())
    np.testing.assert_array_equal(again.scales_[("00", "source")], scales)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(x).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
