"""Trust what is on disk: damage to a shard, a model or a run's files is found when it is read, named in
one line with the fix, and (for shards) rebuilt by data_prep; a clip that would decode to too much memory
is refused from its header.

The damage is real (bytes flipped or cut in real files, real compressed audio), and the commands are the
real ones. Runs reuse the session's prepared synthetic set and its finished gmm run (conftest), copied
before anything is damaged.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import PROJECT_ROOT, VOLATILE_SHARD_ATTRS, assert_same_shard, build_dataset, write_wav

MAIN = str(PROJECT_ROOT / "source" / "main.py")
DATA_PREP = str(PROJECT_ROOT / "source" / "data_prep.py")
REBUILD = "`.venv/bin/python source/data_prep.py` rebuilds it"
VOLATILE = VOLATILE_SHARD_ATTRS


def run(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def predictions(run_dir: Path, machine: str | None = None) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "predictions.csv")
    table = table if machine is None else table[table["machine"] == machine]
    return table.sort_values("file_name").reset_index(drop=True)


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    """XOR `count` bytes at `offset`: what bit rot or a bad copy does."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0x5A for b in data))


def data_offset(path: Path, name: str, row: int = 1) -> int:
    """A byte inside row `row` of dataset `name` in the file (in the stored chunk that holds it)."""
    with h5py.File(path, "r") as file:
        dataset = file[name]
        row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
        first = row // dataset.chunks[0] * dataset.chunks[0]
        chunk = dataset.id.get_chunk_info_by_coord((first,) + (0,) * (dataset.ndim - 1))
        return chunk.byte_offset + (row - first) * row_bytes + row_bytes // 3


def header_offset(path: Path, name: str) -> int:
    """Where the object header of `name` (a group or dataset) starts in the file."""
    with h5py.File(path, "r") as file:
        return h5py.h5o.get_info(file[name].id).addr


@pytest.fixture
def copied(synth_set, tmp_path) -> Path:
    """A copy of the session's processed folder (its dataset folder `synth` inside): safe to damage."""
    out = tmp_path / "processed"
    shutil.copytree(synth_set["processed"], out / "synth")
    return out


# --- shards -------------------------------------------------------------------------------------------

def test_flipped_bytes_are_found_by_train_and_test_and_data_prep_rebuilds(synth_set, gmm_run, copied, tmp_path
                                                                         ) -> None:
    """Bytes flipped in valve's training log-mels and fan's test log-mels: `run` trains and tests what it can,
    names each damaged shard with the fix, and exits 1; data_prep says it found them damaged and rebuilds
    them identical to the originals; the same `run` then gives the clean run's scores."""
    clean_run, _ = gmm_run
    train, test = copied / "synth" / "valve" / "train.h5", copied / "synth" / "fan" / "test.h5"
    for shard in (train, test):
        flip_bytes(shard, data_offset(shard, "logmel"))
    out = tmp_path / "run"
    done = run(MAIN, "run", "--processed-dir", copied / "synth", "--output-dir", out)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"error: synth/valve: train failed: shard {train} is damaged (/logmel row 1 does not match its " \
           f"checksum); {REBUILD}" in done.stderr
    assert f"error: synth/fan: test failed: shard {test} is damaged (/logmel row 1 does not match its " \
           f"checksum); {REBUILD}" in done.stderr
    assert not (out / "synth" / "valve" / "model.pt").exists()  # nothing trained on garbage

    done = run(DATA_PREP, "--raw-dir", synth_set["raw"], "--out-dir", copied, "--jobs", "1", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    for shard in (train, test):
        assert f"damaged shard {shard} (/logmel row 1 does not match its checksum): rebuilt" in done.stdout
        assert_same_shard(shard, synth_set["processed"] / shard.parent.name / shard.name)
    assert "shards written 2, skipped (up to date) 2" in done.stdout

    done = run(MAIN, "run", "--processed-dir", copied / "synth", "--output-dir", out)
    assert done.returncode == 0, done.stderr[-3000:]
    pd.testing.assert_frame_equal(predictions(out), predictions(clean_run))


def test_damage_a_reader_finds_makes_data_prep_verify_and_rebuild(synth_set, copied) -> None:
    """Rot the file system cannot see (the shard's stamp still matches, so data_prep's fast path trusts its
    rows): the first reader to meet it refuses the rows by name and withdraws the stamp, and the next
    data_prep reads the shard in full and rebuilds it."""
    from asd.cache.build import PrepConfig, check_cache, run_prep
    from asd.cache.integrity import stamp_path, write_stamp
    from asd.cache.shard import Shard
    from asd.errors import DamagedFile

    shard = copied / "synth" / "fan" / "train.h5"
    flip_bytes(shard, data_offset(shard, "waveform", row=3))
    write_stamp(shard)  # as if the bytes had rotted on the medium, unseen by the file system
    config = Shard(shard).feature_config
    digest = Shard(shard).attrs["source_digest"]
    assert check_cache(shard, config, digest) == ("skip", "")  # the documented limit of the fast path
    with pytest.raises(DamagedFile) as caught:
        Shard(shard).waveform(slice(0, 8))
    assert str(caught.value) == (f"shard {shard} is damaged (/waveform row 3 does not match its checksum); "
                                 f"{REBUILD} (same --raw-dir/--out-dir as before)")
    assert not stamp_path(shard).exists()
    assert check_cache(shard, config, digest) == ("build", "/waveform row 3 does not match its checksum")
    summary = run_prep(PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(copied), jobs=1), show_progress=False)
    assert summary.shards_written == [str(shard)]
    assert f"  damaged shard {shard} (/waveform row 3 does not match its checksum): rebuilt" in summary.lines()
    assert_same_shard(shard, synth_set["processed"] / "fan" / "train.h5")
    assert stamp_path(shard).exists()


@pytest.mark.parametrize("name", ["logmel", "clips", "segments/name", "checksums/logmel"])
def test_damaged_internal_header_is_named_by_readers_and_rebuilt_by_data_prep(synth_set, copied, name) -> None:
    """A damaged object header inside the shard (its root attributes still read fine): every reader names
    the shard and the fix, and data_prep rebuilds it instead of calling it up to date."""
    from asd.cache.build import PrepConfig, run_prep
    from asd.cache.shard import check_shard
    from asd.errors import DamagedFile

    shard = copied / "synth" / "valve" / "train.h5"
    flip_bytes(shard, header_offset(shard, name) + 6, count=8)
    with pytest.raises(DamagedFile, match=f"^shard {shard} is damaged .*; {REBUILD}"):
        check_shard(shard)
    summary = run_prep(PrepConfig(raw_dir=str(synth_set["raw"]), out_dir=str(copied), jobs=1), show_progress=False)
    assert summary.shards_written == [str(shard)] and len(summary.shards_skipped) == 3
    assert [d.path for d in summary.shards_damaged] == [str(shard)]
    assert_same_shard(shard, synth_set["processed"] / "valve" / "train.h5")
    check_shard(shard)


def test_no_flipped_byte_is_ever_read_as_valid(synth_set, tmp_path) -> None:
    """A byte flipped anywhere in a shard: data_prep's full check finds it, or every reader refuses what it
    touches, or the byte was unused (everything reads back as the clean shard). 150 seeded positions,
    half of them in the first 8 KiB where HDF5 keeps its own structures."""
    code = f"""
import random, shutil, sys
from pathlib import Path
import numpy as np
from asd.cache.integrity import Damage
from asd.cache.shard import Shard, verify_shard
from asd.errors import DamagedFile
src, work = Path({str(synth_set['processed'] / 'fan' / 'test.h5')!r}), Path({str(tmp_path / 'test.h5')!r})
def everything(path):
    shard = Shard(path)
    out = [shard.clips, shard.segments, shard.logmel(slice(None)), shard.waveform(slice(None)),
           {{k: v for k, v in shard.attrs.items() if k not in {sorted(VOLATILE)!r}}}]
    shard.close()
    return out
def same(a, b):
    return all(x.equals(y) if hasattr(x, "equals") else np.array_equal(x, y) if isinstance(x, np.ndarray)
               else x == y for x, y in zip(a, b))
clean = everything(src)
rng, size, counts = random.Random(19), src.stat().st_size, {{}}
for k in range(150):
    offset = rng.randrange(8192 if k % 2 else size)
    shutil.copy(src, work)
    with open(work, "r+b") as f:
        f.seek(offset); byte = f.read(1)[0]; f.seek(offset); f.write(bytes([byte ^ (1 << rng.randrange(8))]))
    try:
        verify_shard(work, full=True)
        found = False
    except Damage:
        found = True
    try:
        read = everything(work)
    except DamagedFile:
        read = None
    if read is not None and not same(read, clean):
        sys.exit(f"byte {{offset}}: read back different without an error")
    if not found and read is None:
        sys.exit(f"byte {{offset}}: refused by a reader but passed data_prep's full check")
    key = "found" if found else "unused"
    counts[key] = counts.get(key, 0) + 1
print(counts)
"""
    done = run("-c", code)  # in a process of its own: a crash inside the HDF5 library would show as one
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    counts = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own print of a dict
    assert counts.get("found", 0) >= 50, counts


def test_shard_of_another_version_is_refused_by_name(copied) -> None:
    """A shard without checksums (schema 2, what earlier versions wrote) is not read: StaleShard naming it."""
    from asd.cache.shard import Shard, StaleShard

    shard = copied / "synth" / "fan" / "test.h5"
    with h5py.File(shard, "r+") as file:
        file.attrs["schema_version"] = 2
        del file.attrs["header_digest"], file.attrs["digests"]
    with pytest.raises(StaleShard, match=f"^{shard} has schema version 2, this version reads 3"):
        Shard(shard)


def test_report_of_a_run_whose_test_shard_was_damaged_since(gmm_run, copied, tmp_path) -> None:
    """The run page reads clips back from the test shards: a shard damaged since the run costs its pictures
    (the page says which shard and why), not the page."""
    import json

    from asd.reports.run_page import write_run_report

    clean_run, _ = gmm_run
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    config = json.loads((out / "config.json").read_text())
    config["run"]["processed_dir"] = str(copied / "synth")
    (out / "config.json").write_text(json.dumps(config))
    shard = copied / "synth" / "fan" / "test.h5"
    with h5py.File(shard, "r") as file:
        rows = file["waveform"].shape[0]
    for row in range(rows):  # every clip's audio: whichever clips the page picks, it meets the damage
        flip_bytes(shard, data_offset(shard, "waveform", row=row))
    page = write_run_report(out).read_text()
    assert f"shard {shard} is damaged (/waveform row " in page
    assert "synth/valve" in page


# --- models ---------------------------------------------------------------------------------------------

def test_model_with_flipped_bytes_is_refused_by_name(gmm_run, tmp_path) -> None:
    """model.pt with a few bytes flipped, cut short, without its digest, or saved in another checkpoint
    format: `test` skips that machine type naming the file, `score` refuses it, nothing loads it."""
    import torch

    from asd.errors import DamagedFile
    from asd.models.checkpoint import digest_path, load_detector, save_detector

    clean_run, _ = gmm_run
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    model = out / "synth" / "fan" / "model.pt"
    size = model.stat().st_size
    flip_bytes(model, size // 2, count=3)
    done = run(MAIN, "test", "--run", out)
    assert done.returncode == 1, done.stderr[-3000:]
    assert (f"error: synth/fan: test failed: {model} is damaged or is not a model saved by this project (its bytes "
            "do not match the SHA-256 in model.pt.sha256); retrain it") in done.stderr
    assert "Traceback" not in done.stderr
    pd.testing.assert_frame_equal(predictions(out), predictions(clean_run, "valve"))
    wav = next((Path(gmm_run[0]).parents[1] / "raw").rglob("*.wav"))
    done = run(MAIN, "score", "--run", out, "--machine", "fan", "--out", tmp_path / "s.csv", wav)
    assert done.returncode == 2 and f"{model} is damaged" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s.csv").exists()

    good = load_detector(clean_run / "synth" / "fan" / "model.pt")
    model.write_bytes((clean_run / "synth" / "fan" / "model.pt").read_bytes()[: size - 100])
    with pytest.raises(DamagedFile, match="its bytes do not match the SHA-256"):
        load_detector(model)
    save_detector(good, model)
    load_detector(model)  # a fresh save loads
    digest_path(model).unlink()
    with pytest.raises(DamagedFile, match="no model.pt.sha256 beside it: saved by another version"):
        load_detector(model)
    payload = torch.load(clean_run / "synth" / "fan" / "model.pt", weights_only=True)
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    torch.save({**payload, "format": 99}, other)  # with a digest that matches: only the format is wrong
    digest_path(other).write_text(hashlib.sha256(other.read_bytes()).hexdigest() + "  model.pt\n")
    with pytest.raises(DamagedFile, match="checkpoint format 99, saved by another version"):
        load_detector(other)
    torch.save({**payload, "config": {**payload["config"], "colour": "red"}}, other)
    digest_path(other).write_text(hashlib.sha256(other.read_bytes()).hexdigest() + "  model.pt\n")
    with pytest.raises(DamagedFile, match="its gmm settings are not this version's"):
        load_detector(other)


# --- the run's files ----------------------------------------------------------------------------------

def _truncated(text: str) -> bytes:
    return text.encode()[: len(text) // 2 + 7]


def _binary(text: str) -> bytes:
    return bytes(random.Random(3).randrange(256) for _ in range(300)) + b"\0"


RUN_FILES = {  # file in the run folder: (how it is read, a good file of another format, another version's file)
    "config.json": (lambda run: run.config, "run,model\nx,gmm\n",
                    '{"run": ["gmm"], "trained": ["synth/fan"]}'),
    "thresholds.csv": (lambda run: run.thresholds, '{"threshold": 1.0}\n',
                       "machine,section,thr\nfan,00,1.5\n"),
    "predictions.csv": (lambda run: run.predictions, "file_name\tscore\nx.wav\t1.0\n",
                        "dataset,file_name,machine,section,domain,anomaly_score,label\nsynth,a.wav,fan,00,source,1.0,normal\n"),
    "synth/summary.csv": (lambda run: run.summary("synth"), '["AUC"]\n', "mach,sec,AUC\nfan,00,0.9\n"),
    "synth/official_score.csv": (lambda run: run.official_score("synth"), "<html></html>\n",
                                 "name,score\nofficial,0.9\n"),
    "synth/fan/task.json": (lambda run: run.folder.read_task("synth", "fan"), "config,thresholds\n",
                            '{"config": {}}'),
    "synth/fan/oof_scores.csv": (lambda run: run.folder.read_oof_scores("synth", "fan"), "a;b\n1;2\n",
                                 "file_name,score\nx.wav,1.0\n"),
}


@pytest.mark.parametrize("damage", ["truncated", "binary", "other format", "other version", "bad value"])
@pytest.mark.parametrize("name", sorted(RUN_FILES))
def test_damaged_run_file_is_refused_in_one_line_naming_it(gmm_run, tmp_path, name, damage) -> None:
    from asd.api import load_run
    from asd.errors import DamagedFile

    clean_run, _ = gmm_run
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    path = out / name
    read, other_format, other_version = RUN_FILES[name]
    read(load_run(out))  # reads fine before the damage
    text = path.read_text()
    if damage == "bad value":  # a value of the wrong kind where the file says a number, a list, ...
        if name.endswith(".json"):
            text = text.replace('"thresholds": [', '"thresholds": "x", "was": [', 1) if "task" in name \
                else text.replace('"trained": [', '"trained": "synth/fan", "was": [', 1)
        else:
            lines = text.splitlines()
            header = lines[0].split(",")
            column = next(c for c in ("score", "threshold", "value", "AUC (source)") if c in header)
            number = next(i for i, line in enumerate(lines) if i and not line.startswith("rules,"))
            row = lines[number].split(",")
            row[header.index(column)] = "abc"
            lines[number] = ",".join(row)
            text = "\n".join(lines) + "\n"
        path.write_text(text)
    else:
        path.write_bytes({"truncated": _truncated(text), "binary": _binary(text),
                          "other format": other_format.encode(), "other version": other_version.encode()}[damage])
    with pytest.raises(DamagedFile) as caught:
        read(load_run(out))
    message = str(caught.value)
    assert message.startswith(f"{path} is damaged or is not ") and "\n" not in message, message


def test_damaged_run_file_through_the_command_line(gmm_run, tmp_path) -> None:
    """The command line turns it into one line and exit status 2, before any work."""
    clean_run, _ = gmm_run
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    (out / "predictions.csv").write_bytes((clean_run / "predictions.csv").read_bytes()[:-20])
    done = run(MAIN, "summarize", out)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {out / 'predictions.csv'} is damaged or is not "
                                                           "a predictions table (its last line is cut short")
    assert done.stderr.count("\n") == 1, done.stderr
    (out / "config.json").write_bytes(b"\x00\x01garbage")
    done = run(MAIN, "test", "--run", out)
    assert done.returncode == 2 and done.stderr == (f"error: {out / 'config.json'} is damaged or is not a run's "
                                                    "config.json (a binary file, not text); train again into a new "
                                                    f"folder (`.venv/bin/python source/main.py train --config "
                                                    f"{out / 'config.yaml'} --output-dir NEW`), or restore the file\n")


# --- ground truth and submissions -----------------------------------------------------------------------

def _ground_truth(folder: Path, rows: list[tuple[str, object, object]]) -> Path:
    """An official-layout ground-truth folder for fan section 00: (file name, label, domain) rows."""
    for sub, column in (("ground_truth_data", 1), ("ground_truth_domain", 2)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "ground_truth_fan_section_00_test.csv").write_text(
            "".join(f"{row[0]},{row[column]}\n" for row in rows))
    return folder


@pytest.mark.parametrize(("anomaly", "normal", "target", "source"),
                         [("1", "0", "1", "0"), ("1.0", "0.0", "1.0", "0.0"), ("True", "False", "true", "FALSE")])
def test_ground_truth_labels_written_as_floats_or_booleans_are_read(tmp_path, anomaly, normal, target, source) -> None:
    from asd.evaluation.ground_truth import load_ground_truth

    rows = [("a.wav", anomaly, source), ("b.wav", normal, target), ("c.wav", normal, source)]
    truth = load_ground_truth(_ground_truth(tmp_path / "gt", rows))
    table = truth.table.set_index("file_name")
    assert table["label"].to_dict() == {"a.wav": "anomaly", "b.wav": "normal", "c.wav": "normal"}
    assert table["domain"].to_dict() == {"a.wav": "source", "b.wav": "target", "c.wav": "source"}


@pytest.mark.parametrize(("value", "where"), [("2", "label"), ("0.5", "label"), ("yes", "label"), ("nan", "label"),
                                              ("anomaly", "label"), ("2", "domain"), ("target", "domain")])
def test_ambiguous_ground_truth_values_are_refused_by_name(tmp_path, value, where) -> None:
    from asd.evaluation.ground_truth import EvaluationError, load_ground_truth

    rows = [("a.wav", "1", "0"), ("b.wav", value if where == "label" else "0", value if where == "domain" else "1")]
    folder = _ground_truth(tmp_path / "gt", rows)
    sub = "ground_truth_data" if where == "label" else "ground_truth_domain"
    with pytest.raises(EvaluationError) as caught:
        load_ground_truth(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / sub / 'ground_truth_fan_section_00_test.csv'}: row 2 (b.wav): {value!r} "
                              "is not 0 or 1") and "\n" not in message


@pytest.mark.parametrize("damage", ["binary", "truncated row", "header row"])
def test_damaged_ground_truth_file_is_refused_by_name(tmp_path, damage) -> None:
    from asd.evaluation.ground_truth import EvaluationError, load_ground_truth

    folder = _ground_truth(tmp_path / "gt", [("a.wav", "1", "0"), ("b.wav", "0", "1")])
    path = folder / "ground_truth_data" / "ground_truth_fan_section_00_test.csv"
    path.write_bytes({"binary": b"\x89PNG\r\n\x1a\n\x00\x00", "truncated row": b"a.wav,1\nb.wa",
                      "header row": b"file_name,label\na.wav,1\nb.wav,0\n"}[damage])
    with pytest.raises(EvaluationError, match=f"^{path}") as caught:
        load_ground_truth(folder)
    assert "\n" not in str(caught.value)


def test_evaluate_reads_float_labels_and_refuses_a_bad_submission_file(gmm_run, tmp_path) -> None:
    """The official figures are the same whether the ground truth says 1/0 or 1.0/0.0; a submission file
    with a score that is not a number is refused naming it, the other folders are still evaluated."""
    from asd.evaluation.ground_truth import evaluate_folders
    from asd.evaluation.submission import read_submission_scores

    clean_run, _ = gmm_run
    submission = clean_run / "synth" / "submission"
    figures = {}
    for style in ("int", "float"):
        folder = tmp_path / style
        for path in submission.glob("anomaly_score_*.csv"):
            names = read_submission_scores(path)["file_name"]
            machine = path.name[len("anomaly_score_"):].split("_section_")[0]
            rows = [(n, ("1" if "anomaly" in n else "0") + (".0" if style == "float" else ""),
                     ("1" if "target" in n else "0") + (".0" if style == "float" else "")) for n in names]
            for sub, column in (("ground_truth_data", 1), ("ground_truth_domain", 2)):
                (folder / sub).mkdir(parents=True, exist_ok=True)
                (folder / sub / f"ground_truth_{machine}_section_00_test.csv").write_text(
                    "".join(f"{r[0]},{r[column]}\n" for r in rows))
        copy = tmp_path / f"submission-{style}"
        shutil.copytree(submission, copy)
        lines = []
        assert evaluate_folders(folder, [copy], with_ci=False, echo=lines.append)
        figures[style] = pd.read_csv(copy / "evaluation" / "official_score.csv")
    pd.testing.assert_frame_equal(figures["int"], figures["float"])
    bad = tmp_path / "bad" / "submission"
    shutil.copytree(submission, bad)
    score_file = next(bad.glob("anomaly_score_fan_*.csv"))
    score_file.write_text(score_file.read_text().replace(",", ",x", 1))
    errors: list[str] = []
    assert not evaluate_folders(tmp_path / "float", [bad, tmp_path / "submission-int"], with_ci=False,
                                echo=lambda line: None, echo_error=errors.append)
    assert len(errors) == 1 and errors[0].startswith(f"error: {score_file}: row 1 (") and "is not a number" in errors[0]


# --- bounded decoding --------------------------------------------------------------------------------------

def _silent_compressed(path: Path, seconds: int, rate: int, channels: int, fmt: str) -> Path:
    """A small compressed file of silence under a .wav name, written a second at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = np.zeros((rate, channels), np.int16 if fmt == "FLAC" else np.float32)
    with sf.SoundFile(path, "w", rate, channels, format=fmt, subtype="PCM_16" if fmt == "FLAC" else "VORBIS") as file:
        for _ in range(seconds):
            file.write(block)
    return path


@pytest.mark.parametrize(("fmt", "seconds", "rate", "channels"), [("FLAC", 20, 192000, 8), ("OGG", 51, 48000, 8)])
def test_decode_bomb_is_refused_from_its_header(tmp_path, fmt, seconds, rate, channels) -> None:
    """FLAC / Ogg Vorbis under a .wav name, a few KB that decode to hundreds of MB: refused before decoding."""
    from asd.cache.audio import MAX_DECODED_SAMPLES, BadAudio, read_clip
    from asd.cache.features import FeatureConfig

    bomb = _silent_compressed(tmp_path / "bomb.wav", seconds, rate, channels, fmt)
    assert bomb.stat().st_size < 512 * 1024 and sf.info(bomb).frames * channels > MAX_DECODED_SAMPLES
    with pytest.raises(BadAudio, match=f"^too large to decode: the header declares {seconds * rate} frames x "
                                       f"{channels} channels at {rate} Hz"):
        read_clip(str(bomb), FeatureConfig())


def test_data_prep_memory_stays_flat_with_a_decode_bomb(tmp_path) -> None:
    """data_prep over a small FLAC that decodes to 2.9 GB of int16 (8 channels, 192 kHz, 120 s; before the
    header check its peak was 1.4 GB): the file is skipped with the reason, the run's peak memory stays
    that of a normal run."""
    raw = build_dataset(tmp_path / "raw" / "ds", {"fan": (2, 0)})
    bomb = _silent_compressed(raw / "fan" / "train" / "section_00_source_train_normal_0099_bomb.wav", 120, 192000, 8,
                              "FLAC")
    write_wav(raw / "fan" / "train" / "section_00_source_train_normal_0098_ok.wav", seconds=2.0)
    code = ("import resource, subprocess, sys\n"
            f"done = subprocess.run([sys.executable, {DATA_PREP!r}, '--raw-dir', {str(raw.parent)!r}, '--out-dir', "
            f"{str(tmp_path / 'out')!r}, '--jobs', '1', '--quiet'], capture_output=True, text=True)\n"
            "print(done.stdout); print(done.returncode)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    done = run("-c", code)
    *output, status, peak_mib = done.stdout.strip().splitlines()
    assert status == "0", done.stdout + done.stderr
    text = "\n".join(output)
    assert f"{bomb.relative_to(raw.parent)}: too large to decode: the header declares 23040000 frames x 8 " \
           "channels at 192000 Hz (FLAC)" in text
    assert "data_prep: 3 clips -> " in text
    assert int(peak_mib) < 600, f"peak {peak_mib} MiB"
