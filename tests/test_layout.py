"""DCASE file names of every year, the manifest built from a raw tree, and the attributes CSV check."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from asd.dataset.layout import (
    MANIFEST_COLUMNS,
    ClipName,
    UnparseableName,
    check_attributes_csv,
    dataset_name,
    parse_clip_name,
    rules_for,
    scan_raw_root,
)
from conftest import REAL_ROOT, requires_real

# (file name, section, domain, label, split named, attributes, clip number, style)
NAMES = [
    # 2020: machine IDs, no domains; eval names carry no label
    ("normal_id_00_00000000.wav", "00", "source", "normal", None, "", 0, "2020"),
    ("anomaly_id_02_00000012.wav", "02", "source", "anomaly", None, "", 12, "2020"),
    ("id_05_00000000.wav", "05", "source", "unknown", None, "", 0, "2020"),
    # 2021: attributes in train names, none in test names; 2021 eval names drop the label
    ("section_00_source_train_normal_0000_A1Spd28VMic1.wav", "00", "source", "normal", "train",
     "A1Spd28VMic1", 0, "2021+"),
    ("section_00_source_test_anomaly_0000.wav", "00", "source", "anomaly", "test", "", 0, "2021+"),
    ("section_03_target_test_0007.wav", "03", "target", "unknown", "test", "", 7, "eval"),
    # 2022
    ("section_01_target_train_normal_0009_m-n_Y.wav", "01", "target", "normal", "train", "m-n_Y", 9, "2021+"),
    ("section_01_source_test_normal_0000_m-n_X.wav", "01", "source", "normal", "test", "m-n_X", 0, "2021+"),
    # 2023
    ("section_00_target_test_anomaly_0015_car_A2_spd_6_mic_2.wav", "00", "target", "anomaly", "test",
     "car_A2_spd_6_mic_2", 15, "2021+"),
    # 2024: numbering from 0001, hidden attributes, eval names without label and domain
    ("section_00_source_train_normal_0001_noAttribute.wav", "00", "source", "normal", "train",
     "noAttribute", 1, "2021+"),
    ("section_00_0001.wav", "00", "unknown", "unknown", None, "", 1, "eval"),
    # 2025: empty attribute tail
    ("section_00_source_train_normal_0000_.wav", "00", "source", "normal", "train", "", 0, "2021+"),
    # SPEC §2's attribute rule: everything after the sixth token
    ("section_00_source_train_normal_0001_car_B1_spd_31V_mic_1.wav", "00", "source", "normal", "train",
     "car_B1_spd_31V_mic_1", 1, "2021+"),
    # attribute values may themselves hold dots and digits
    ("section_00_source_train_normal_0073_volt_1.5_wt_0.wav", "00", "source", "normal", "train",
     "volt_1.5_wt_0", 73, "2021+"),
]


@pytest.mark.parametrize(
    ("file_name", "section", "domain", "label", "split", "attributes", "number", "style"),
    NAMES, ids=[row[0] for row in NAMES],
)
def test_parse_clip_name(file_name: str, section: str, domain: str, label: str, split: str | None,
                         attributes: str, number: int, style: str) -> None:
    assert parse_clip_name(file_name) == ClipName(section=section, domain=domain, label=label, split=split,
                                                  attributes=attributes, clip_number=number, style=style)


def test_parse_ignores_folders_in_the_name() -> None:
    assert parse_clip_name("fan/train/normal_id_04_00000003.wav").section == "04"


@pytest.mark.parametrize("file_name", [
    "recording.wav", "section_xx_source_train_normal_0001.wav", "normal_id_00.wav", "section_00.wav",
    "id_00_abc.wav", "",
])
def test_unparseable_names_raise_with_an_example(file_name: str) -> None:
    with pytest.raises(UnparseableName, match="expected e.g."):
        parse_clip_name(file_name)


def _touch(path: Path) -> None:
    """The manifest only looks at names, so empty files will do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_scan_2021_domain_test_folders_are_split_test(tmp_path: Path) -> None:
    names = {
        "train": ["section_00_source_train_normal_0000_A1.wav", "section_00_target_train_normal_0000_B2.wav"],
        "source_test": ["section_00_source_test_anomaly_0000.wav", "section_00_source_test_normal_0001.wav"],
        "target_test": ["section_00_target_test_normal_0000.wav"],
    }
    for folder, files in names.items():
        for name in files:
            _touch(tmp_path / "dcase2021" / "fan" / folder / name)
    manifest, skipped = scan_raw_root(tmp_path)
    assert skipped == []
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 5
    assert set(manifest["dataset"]) == {"dcase2021"} and set(manifest["machine"]) == {"fan"}
    tests = manifest[manifest["split_folder"] != "train"]
    assert set(tests["split"]) == {"test"} and set(tests["style"]) == {"2021"}
    assert set(manifest.loc[manifest["split_folder"] == "train", "style"]) == {"2021+"}
    assert rules_for(manifest) == "dcase2021"
    row = manifest[manifest["file_name"] == "section_00_target_train_normal_0000_B2.wav"].iloc[0]
    assert (row["domain"], row["label"], row["attributes"]) == ("target", "normal", "B2")
    assert row["split"] == "train"
    assert row["rel_path"] == "dcase2021/fan/train/section_00_target_train_normal_0000_B2.wav"


def test_scan_reports_unparseable_names_and_keeps_the_rest(tmp_path: Path) -> None:
    good = tmp_path / "ToyCar" / "train" / "section_00_source_train_normal_0001_noAttribute.wav"
    _touch(good)
    _touch(tmp_path / "ToyCar" / "train" / "my_recording.wav")
    _touch(tmp_path / "ToyCar" / "test" / "section_00_0001.wav")
    manifest, skipped = scan_raw_root(tmp_path)
    assert list(manifest["file_name"]) == ["section_00_0001.wav", good.name]
    assert [s.path for s in skipped] == ["ToyCar/train/my_recording.wav"]
    assert "not a DCASE Task 2 name" in skipped[0].reason
    # machine folders directly under the root: dataset "."
    assert set(manifest["dataset"]) == {"."}
    eval_row = manifest.iloc[0]
    assert (eval_row["split"], eval_row["label"], eval_row["domain"], eval_row["style"]) == (
        "test", "unknown", "unknown", "eval")
    assert rules_for(manifest) == "dcase2022"


def test_scan_2020_rules_and_machine_filter(tmp_path: Path) -> None:
    _touch(tmp_path / "dcase2020" / "slider" / "train" / "normal_id_00_00000000.wav")
    _touch(tmp_path / "dcase2020" / "slider" / "test" / "id_05_00000000.wav")
    _touch(tmp_path / "dcase2020" / "pump" / "train" / "normal_id_02_00000000.wav")
    manifest, _ = scan_raw_root(tmp_path, machines=["slider"])
    assert set(manifest["machine"]) == {"slider"} and len(manifest) == 2
    assert rules_for(manifest) == "dcase2020"
    assert manifest.set_index("file_name").at["id_05_00000000.wav", "label"] == "unknown"


def test_folder_wins_over_the_split_in_the_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path / "fan" / "test" / "section_00_source_train_normal_0001_x.wav")
    manifest, _ = scan_raw_root(tmp_path)
    assert manifest.iloc[0]["split"] == "test"
    assert "the folder wins" in caplog.text


def _write_dcase2023_machine(root: Path) -> Path:
    """A fan folder with the attribute strings the 2023 development set uses."""
    machine = root / "fan"
    for name in ("section_00_source_train_normal_0001_m-n_X.wav",
                 "section_00_target_train_normal_0002_m-n_Y.wav",
                 "section_00_source_train_normal_0003_noAttribute.wav"):
        _touch(machine / "train" / name)
    return machine


def test_attributes_csv_that_agrees_is_silent(tmp_path: Path) -> None:
    machine = _write_dcase2023_machine(tmp_path)
    (machine / "attributes_00.csv").write_text(
        "file_name,d1p,d1v\n"
        "fan/train/section_00_source_train_normal_0001_m-n_X.wav,m-n,X\n"
        "fan/train/section_00_target_train_normal_0002_m-n_Y.wav,m-n,Y\n"
        "fan/train/section_00_source_train_normal_0003_noAttribute.wav,m-n,Z\n"  # hidden in the name
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manifest, _ = scan_raw_root(tmp_path)
    assert list(manifest["attributes"]) == ["m-n_X", "noAttribute", "m-n_Y"]


def test_attributes_csv_that_disagrees_warns_and_names_win(tmp_path: Path) -> None:
    machine = _write_dcase2023_machine(tmp_path)
    (machine / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        "fan/train/section_00_source_train_normal_0001_m-n_X.wav,m-n,W,,\n"
        "fan/train/section_00_target_train_normal_0002_m-n_Y.wav,m-n,Y,,\n"
    )
    with pytest.warns(UserWarning, match="1 rows disagree with their file names; the file names win"):
        manifest, _ = scan_raw_root(tmp_path)
    assert manifest.set_index("clip_number").at[1, "attributes"] == "m-n_X"


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 8,  # binary garbage
    b"this is not, a\nproper \"attributes file\n",  # no file_name column, unbalanced quote
    b"",  # empty file
], ids=["binary", "no-file-name-column", "empty"])
def test_broken_attributes_csv_warns_and_never_fails(tmp_path: Path, content: bytes) -> None:
    machine = _write_dcase2023_machine(tmp_path)
    (machine / "attributes_00.csv").write_bytes(content)
    with pytest.warns(UserWarning, match="unreadable"):
        manifest, skipped = scan_raw_root(tmp_path)
    assert len(manifest) == 3 and skipped == []
    assert "m-n_Y" in set(manifest["attributes"])


def test_check_attributes_csv_returns_its_problems(tmp_path: Path) -> None:
    machine = _write_dcase2023_machine(tmp_path)
    (machine / "attributes_00.csv").write_text("name,value\nx,1\n")
    with pytest.warns(UserWarning):
        problems = check_attributes_csv(machine, [])
    assert len(problems) == 1 and "no 'file_name' column" in problems[0]


@requires_real
def test_real_recordings_parse_as_their_names_say() -> None:
    manifest, skipped = scan_raw_root(REAL_ROOT)
    assert skipped == []
    assert set(manifest["machine"]) == {"ToyTrain", "bearing", "fan", "gearbox", "slider", "valve",
                                        "unidentified_machine"}
    assert len(manifest) == 33
    assert set(manifest["dataset"]) == {"dcase2023t2", "dcase2020t2"}  # not ".../dev_data/raw"
    real_2023 = manifest[manifest["dataset"] == "dcase2023t2"]
    assert len(real_2023) == 24 and set(real_2023["section"]) == {"00"}
    pattern = re.compile(r"section_(\d\d)_(source|target)_(train|test)_(normal|anomaly)_(\d{4})_(.+)\.wav")
    for row in real_2023.itertuples():
        section, domain, split, label, number, attributes = pattern.fullmatch(row.file_name).groups()
        assert (row.section, row.domain, row.split, row.label, row.clip_number, row.attributes) == (
            section, domain, split, label, int(number), attributes)
        assert row.split == row.split_folder
    assert rules_for(real_2023) == "dcase2022"
    real_2020 = manifest[manifest["machine"] == "unidentified_machine"]
    assert len(real_2020) == 9 and set(real_2020["style"]) == {"2020"} and set(real_2020["section"]) == {"00"}
    assert dict(real_2020.groupby("split")["label"].agg(lambda s: set(s))) == {
        "train": {"normal"}, "test": {"anomaly"}}
    assert rules_for(real_2020) == "dcase2020"


def test_raw_root_may_be_a_single_machine_folder(tmp_path: Path) -> None:
    # a course project often holds one machine type only, and points the tool straight at it
    _touch(tmp_path / "slide_rail" / "train" / "normal_id_00_00000000.wav")
    _touch(tmp_path / "slide_rail" / "test" / "id_00_00000001.wav")
    manifest, skipped = scan_raw_root(tmp_path / "slide_rail")
    assert skipped == [] and len(manifest) == 2
    assert set(manifest["machine"]) == {"slide_rail"} and set(manifest["dataset"]) == {"."}
    assert sorted(manifest["rel_path"]) == ["test/id_00_00000001.wav", "train/normal_id_00_00000000.wav"]


@pytest.mark.parametrize(("machine_dir", "raw_root", "name"), [
    ("data/raw/mine/pump", "data/raw", "mine"),  # <name>/<machine>
    ("data/raw/dcase2023t2/dev_data/raw/fan", "data/raw", "dcase2023t2"),  # the official layout: the set's name
    ("data/raw/dcase2023t2/eval_data/raw/fan", "data/raw", "dcase2023t2-eval"),  # dev and eval never collide
    ("data/raw/2023/dcase2023t2/dev_data/raw/fan", "data/raw", "2023/dcase2023t2"),
    ("data/raw/dcase2023t2/dev_data/raw/fan", "data/raw/dcase2023t2", "dcase2023t2"),  # root = the set
    ("data/raw/dcase2023t2/eval_data/raw/fan", "data/raw/dcase2023t2/eval_data", "dcase2023t2-eval"),
    ("data/raw/synth/fan", "data/raw/synth", "."),  # machine folders straight under the root
    ("data/raw/synth/fan", "data/raw/synth/fan", "."),  # the root is the machine folder
])
def test_dataset_names_follow_the_folders_a_user_knows(machine_dir: str, raw_root: str, name: str) -> None:
    assert dataset_name(Path(raw_root), Path(machine_dir)) == name
