"""The Python API for notebooks (`asd.api`, re-exported from `asd`): the README's example, run word for
word, and what its objects hold."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

import asd
from asd.errors import BadInput
from conftest import PROJECT_ROOT


def readme_example() -> str:
    """The first ```python block of the README."""
    match = re.search(r"```python\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.S)
    assert match, "the README has no ```python example"
    return match.group(1)


def test_the_readme_example_runs_as_written(synth_set, default_run, tmp_path, monkeypatch, capsys) -> None:
    # the folders the example names, as `bash scripts/demo.sh` leaves them
    (tmp_path / "data" / "processed").mkdir(parents=True)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "processed" / "synth").symlink_to(synth_set["processed"])
    (tmp_path / "data" / "raw" / "synth").symlink_to(synth_set["raw"] / "synth")
    shutil.copytree(default_run[0], tmp_path / "output" / "20990101-000000_auto")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - the README's own example

    scores = namespace["scores"]
    assert {"dataset", "file_name", "score", "threshold", "decision"} <= set(scores.columns)
    by_label = scores.groupby("label")["score"].mean()
    assert by_label["anomaly"] > by_label["normal"]
    # fitted as `asd run` fits it: the same thresholds and scores as the session's default run
    reference = pd.read_csv(default_run[0] / "predictions.csv")
    fan = reference[reference["machine"] == "fan"].sort_values("file_name")
    assert scores.sort_values("file_name")["score"].tolist() == fan["score"].tolist()
    wavs = namespace["wavs"]
    assert len(wavs) == len(list((synth_set["raw"] / "synth" / "fan" / "test").glob("*.wav")))
    official = pd.read_csv(default_run[0] / "synth" / "official_score.csv").set_index("metric")["value"]
    assert namespace["run"].official_score("synth") == float(official["official score"])
    assert "official score" not in capsys.readouterr().err


def test_api_objects(synth_set, gmm_run) -> None:
    cache = asd.open_cache(synth_set["processed"])
    assert [m.key for m in cache.machines] == ["synth/fan", "synth/valve"]
    with pytest.raises(BadInput, match="no machine type 'pump'"):
        cache.machine("pump")
    with pytest.raises(BadInput, match="unknown setting"):
        asd.fit(cache.machine("fan"), colour="red")
    run = asd.load_run(gmm_run[0])
    assert run.config.model == "gmm" and run.config.fit.seed == 0
    assert set(run.predictions["dataset"]) == {"synth"} and run.thresholds is not None
    assert run.detector("fan").thresholds_ == asd.fit(cache.machine("fan"), model="gmm").thresholds_
    assert list(run.summary("synth")["machine"]) == ["fan", "valve"]
