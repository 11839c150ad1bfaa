"""Tests for the synthetic DCASE-like dataset generator (asd.dataset.synth)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from asd.dataset.synth import MACHINE_TYPES, SynthConfig, generate_dataset, plan_clips, render_clip
from asd.dataset.synth.config import CONFIG_FILE
from asd.dataset.synth.dataset import ClipSpec

SR = 16000
NAME_2024 = re.compile(
    r"^section_00_(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)_"
    r"(?P<num>\d{4})_(?P<attr>.+)\.wav$"
)
NAME_2020 = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<id>00|02)_(?P<num>\d{8})\.wav$")


def _wavs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.wav"))


def _small(tmp: Path, **kw: object):
    args = dict(seed=3, scale=0.01, clip_seconds=0.25, n_jobs=1)
    args.update(kw)
    return generate_dataset(tmp, **args)


def test_counts_rule_has_floors_and_full_scale() -> None:
    full = SynthConfig().counts()
    assert (full.source_train, full.target_train, full.test) == (990, 10, 50)
    tiny = SynthConfig(scale=0.001).counts()
    assert (tiny.source_train, tiny.target_train, tiny.test) == (20, 3, 5)
    half = SynthConfig(scale=0.5).counts()
    assert (half.source_train, half.target_train, half.test) == (495, 5, 25)


def test_layout_2024_names_counts_and_attributes_csv(tmp_path: Path) -> None:
    df = _small(tmp_path, machines=("fan", "valve"), hidden_attributes=("valve",))
    files = _wavs(tmp_path)
    assert len(files) == len(df) == 2 * (20 + 3 + 4 * 5)
    assert {p.relative_to(tmp_path).as_posix() for p in files} == set(df["path"])

    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for path in files:
        machine, split, name = path.relative_to(tmp_path).parts
        m = NAME_2024.match(name)
        assert m, name
        assert m["split"] == split
        if machine == "valve":
            assert m["attr"] == "noAttribute"
        else:
            assert re.fullmatch(r"spd_\d+_bld_\d+", m["attr"]), m["attr"]
        groups.setdefault((machine, split, m["domain"], m["label"]), []).append(int(m["num"]))
    expected = {("train", "source", "normal"): 20, ("train", "target", "normal"): 3}
    expected.update({("test", d, lab): 5 for d in ("source", "target") for lab in ("normal", "anomaly")})
    for machine in ("fan", "valve"):
        for (split, domain, label), count in expected.items():
            # numbering starts at 0001 and is counted separately per domain, split and label
            assert sorted(groups[(machine, split, domain, label)]) == list(range(1, count + 1))

    for machine in ("fan", "valve"):
        with (tmp_path / machine / "attributes_00.csv").open(newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        assert header[0] == "file_name" and header[1:3] == ["d1p", "d1v"]
        assert {r[0] for r in body} == set(df.loc[df["machine"] == machine, "path"])
        for r in body:
            tail = NAME_2024.match(Path(r[0]).name)["attr"]
            if machine == "valve":
                assert r[1:] == ["noAttribute", ""]
            else:
                assert "_".join(r[1:]) == tail  # parameter/value pairs spell the name tail

    assert set(df.columns) >= {"path", "machine", "split", "section", "domain", "label", "attributes"}
    assert (df["section"] == "00").all()
    anomalies = df[df["label"] == "anomaly"]
    assert (anomalies["anomaly_kind"] != "").all() and (df.loc[df["label"] == "normal", "anomaly_kind"] == "").all()


def test_target_domain_uses_shifted_attributes(tmp_path: Path) -> None:
    df = _small(tmp_path, machines=("fan",))
    src = set(df.loc[df["domain"] == "source", "attributes"])
    tgt = set(df.loc[df["domain"] == "target", "attributes"])
    assert src and tgt and not src & tgt


def test_layout_2020(tmp_path: Path) -> None:
    df = _small(tmp_path, machines=("slider",), naming="2020")
    files = _wavs(tmp_path)
    assert len(files) == len(df) == 2 * (20 + 5 + 5)
    assert not (tmp_path / "slider" / "attributes_00.csv").exists()
    numbers: dict[tuple[str, str, str], list[int]] = {}
    for path in files:
        _, split, name = path.relative_to(tmp_path).parts
        m = NAME_2020.match(name)
        assert m, name
        assert split == "train" or split == "test"
        assert not (split == "train" and m["label"] == "anomaly")
        numbers.setdefault((split, m["label"], m["id"]), []).append(int(m["num"]))
    for mid in ("00", "02"):
        assert sorted(numbers[("train", "normal", mid)]) == list(range(20))
        assert sorted(numbers[("test", "normal", mid)]) == list(range(5))
        assert sorted(numbers[("test", "anomaly", mid)]) == list(range(5))
    assert set(df["section"]) == {"00", "02"}


def test_wav_format_and_config_file(tmp_path: Path) -> None:
    df = _small(tmp_path, machines=("gearbox",), clip_seconds=0.5)
    for rel in df["path"][:5]:
        info = sf.info(tmp_path / rel)
        assert (info.samplerate, info.subtype, info.channels, info.frames) == (SR, "PCM_16", 1, SR // 2)
    cfg = SynthConfig.from_json((tmp_path / CONFIG_FILE).read_text())
    assert cfg.machines == ("gearbox",) and cfg.seed == 3 and cfg.clip_seconds == 0.5


def test_stereo_left_is_near_mic(tmp_path: Path) -> None:
    mono_dir, stereo_dir = tmp_path / "mono", tmp_path / "stereo"
    df = _small(mono_dir, machines=("fan",), clip_seconds=1.0, scale=0.001)
    _small(stereo_dir, machines=("fan",), clip_seconds=1.0, scale=0.001, stereo=True)
    louder = []
    for rel in df["path"]:
        mono, _ = sf.read(mono_dir / rel, dtype="int16")
        st, _ = sf.read(stereo_dir / rel, dtype="int16")
        assert st.shape == (SR, 2) and sf.info(stereo_dir / rel).subtype == "PCM_16"
        np.testing.assert_array_equal(st[:, 0], mono)  # left channel = the near mic = the mono clip
        left, right = st.astype(float).T
        louder.append(np.sqrt(np.mean(left**2)) > np.sqrt(np.mean(right**2)))
        # the channels share the machine, so they are correlated but not identical
        assert 0.1 < np.corrcoef(left, right)[0, 1] < 0.99
    assert all(louder)


def test_determinism_across_runs_and_n_jobs(tmp_path: Path) -> None:
    kw = dict(machines=("gearbox", "valve"), scale=0.001, clip_seconds=0.25)
    _small(tmp_path / "a", n_jobs=1, **kw)
    _small(tmp_path / "b", n_jobs=2, **kw)
    _small(tmp_path / "c", n_jobs=1, seed=4, **kw)
    a, b, c = (_wavs(tmp_path / d) for d in "abc")
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    differing = sum(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a, c, strict=True))
    assert differing == len(a)  # a new seed gives new audio for every clip


def _features(pcm: np.ndarray) -> np.ndarray:
    """Mean and std over time of a log power spectrogram in 64 linear bands."""
    _, _, z = scipy.signal.stft(pcm.astype(np.float64) / 32768.0, fs=SR, nperseg=512, noverlap=256)
    power = np.abs(z[1:257]) ** 2
    bands = power.reshape(64, 4, -1).sum(1)
    logp = 10 * np.log10(bands + 1e-12)
    return np.concatenate([logp.mean(1), logp.std(1)])


def _anomaly_ratio(machine: str, strength: float) -> float:
    """Mean distance (to the nearest normal training clip) of anomalies divided by that of held-out normals."""
    cfg = SynthConfig(seed=11, machines=(machine,), anomaly_strength=strength, clip_seconds=4.0)
    specs = [s for s in plan_clips(cfg, machine) if s.domain == "source"]
    train = [s for s in specs if s.split == "train"][:24]
    held = [s for s in specs if s.split == "test" and s.label == "normal"][:10]
    anom = [s for s in specs if s.split == "test" and s.label == "anomaly"][:10]

    def feats(group: list[ClipSpec]) -> np.ndarray:
        return np.stack([_features(render_clip(cfg, s)[0]) for s in group])

    ftrain, fheld, fanom = feats(train), feats(held), feats(anom)
    mu, sd = ftrain.mean(0), ftrain.std(0) + 1e-3

    def nn(x: np.ndarray) -> np.ndarray:
        z, zt = (x - mu) / sd, (ftrain - mu) / sd
        return np.sqrt(((z[:, None, :] - zt[None]) ** 2).sum(-1)).min(1)

    return float(nn(fanom).mean() / nn(fheld).mean())


@pytest.mark.parametrize("machine", MACHINE_TYPES)
def test_anomalies_change_the_sound(machine: str) -> None:
    assert _anomaly_ratio(machine, strength=4.0) > 1.3


@pytest.mark.parametrize("machine", MACHINE_TYPES)
def test_zero_strength_anomalies_look_normal(machine: str) -> None:
    assert 0.8 < _anomaly_ratio(machine, strength=0.0) < 1.2


def test_anomaly_kinds_cover_every_kind() -> None:
    cfg = SynthConfig(scale=1.0, machines=("valve",), clip_seconds=0.1)
    specs = [s for s in plan_clips(cfg, "valve") if s.label == "anomaly"]
    kinds = Counter(render_clip(cfg, s)[1] for s in specs)
    assert set(kinds) == {"leak", "sticking", "contamination"}
    assert min(kinds.values()) >= 15  # roughly balanced over 100 anomalous clips


@pytest.mark.parametrize(
    "kwargs",
    [dict(naming="2023"), dict(machines=("pump",)), dict(scale=0), dict(seed=-1), dict(anomaly_strength=-1),
     dict(hidden_attributes=("nosuch",)), dict(clip_seconds=0)],
)
def test_invalid_parameters_are_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing written before validation
