"""The dataset page (`explore`), the run report and the comparison page: what they are built from (clips
read back from shards, level statistics, odd-clip ranking), what they hold, and the pages opened in a real
headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium): every image loads, no
console error, the tables hold the run's figures, the audio has sources. The browser tests skip, with the
reason, where Selenium or the browser is missing (`scripts/test.sh` installs the browser as root on Debian).
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from asd.cache.build import PrepConfig, run_prep
from asd.cache.clips import find_clip_rows, iter_shard_clips
from asd.cache.features import FeatureConfig
from asd.cli import main
from asd.reports.explore_stats import attribute_pairs, level_stats
from conftest import build_dataset, dcase2024_name, write_wav


class _Tables(html.parser.HTMLParser):
    """Tables of a page by id: rows of cell texts (the header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._id = attrs["id"]
            self.tables[self._id] = []
        elif tag == "tr" and self._id:
            self.tables[self._id].append([])
        elif tag in ("td", "th") and self._id:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._id = None
        elif tag in ("td", "th") and self._id and self._cell is not None:
            self.tables[self._id][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def page_tables(path: Path) -> dict[str, pd.DataFrame]:
    parser = _Tables()
    parser.feed(Path(path).read_text())
    return {k: pd.DataFrame(rows[1:], columns=rows[0]) for k, rows in parser.tables.items() if rows}


def test_level_stats_of_known_signals() -> None:
    rate = 16000
    square = np.where(np.arange(rate) % 40 < 20, 32767, -32768).astype(np.int16)
    stats = level_stats(square, rate)
    assert stats["clipped_fraction"] == 1.0 and stats["peak_dbfs"] == pytest.approx(0.0, abs=1e-3)
    assert stats["rms_dbfs"] == pytest.approx(0.0, abs=1e-3) and stats["silent_fraction"] == 0.0
    sine = np.round(16384 * np.sin(2 * np.pi * 1000 * np.arange(2 * rate) / rate)).astype(np.int16)
    stats = level_stats(sine, rate)
    assert stats["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    assert stats["duration_s"] == 2.0 and stats["clipped_fraction"] == 0.0
    half_silent = np.concatenate([sine[:rate], np.zeros(rate, dtype=np.int16)])
    assert level_stats(half_silent, rate)["silent_fraction"] == pytest.approx(0.5, abs=0.02)
    assert attribute_pairs("car_B1_spd_31V") == [("car", "B1"), ("spd", "31V")]
    assert attribute_pairs("noAttribute") == [] and attribute_pairs("a_b_c") == [("attributes", "a_b_c")]


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> dict[str, Path]:
    """Ten 2.5 s training clips of one machine (the tail segment overlaps), one of them a different sound,
    one corrupt file, four test clips; prepped."""
    base = tmp_path_factory.mktemp("explore")
    raw = base / "raw" / "tiny"
    build_dataset(raw, {"pump": (9, 4)}, seconds=2.5)
    write_wav(raw / "pump" / "train" / dcase2024_name(0, "source", "train", "normal", 50, "spd_9"),
              seconds=2.5, seed=99, freq=3100.0)
    (raw / "pump" / "train" / dcase2024_name(0, "source", "train", "normal", 60, "spd_0")).write_bytes(b"junk")
    processed = base / "processed"
    run_prep(PrepConfig(raw_dir=str(base / "raw"), out_dir=str(processed), jobs=1))
    return {"base": base, "raw": base / "raw", "processed": processed}


def test_clips_read_back_from_shards_equal_the_wav_files(odd_dataset) -> None:
    shard = odd_dataset["processed"] / "tiny" / "pump" / "train.h5"
    for max_segments in (1, 512):  # chunks of one segment and of every clip give the same clips
        clips = list(iter_shard_clips(shard, max_segments=max_segments, block=4))
        assert len(clips) == 10
        for clip in clips:
            samples, _ = sf.read(odd_dataset["raw"] / clip.meta["rel_path"], dtype="int16")
            np.testing.assert_array_equal(clip.samples, samples)
            assert clip.covered == len(samples) and clip.logmel.shape[0] == FeatureConfig().n_mels
    rows = find_clip_rows(shard, {clips[3].meta["file_name"]})
    again = next(iter_shard_clips(shard, rows=list(rows.values())))
    np.testing.assert_array_equal(again.samples, clips[3].samples)
    np.testing.assert_array_equal(again.logmel, clips[3].logmel)


def test_explore_page_counts_levels_odd_clip_and_skipped_file(odd_dataset, tmp_path) -> None:
    done = CliRunner().invoke(main, ["explore", "--processed-dir", str(odd_dataset["processed"]),
                                     "--out", str(tmp_path), "--examples", "2"])
    assert done.exit_code == 0, done.output
    page = tmp_path / "tiny.html"
    assert "tiny.html" in done.output and page.stat().st_size < 5 * 2**20
    tables = page_tables(page)
    counts = tables["counts-full"].astype({"clips": int})
    assert counts["clips"].sum() == 14
    assert counts["train normal"].astype(int).sum() == 10
    assert counts["test anomaly"].astype(int).sum() == 2
    # The clip with another sound is the least typical of its group.
    atypical = tables["atypical-pump"]
    assert atypical["clip"].iloc[0].endswith("_0050_spd_9.wav"), atypical
    assert "0060_spd_0.wav" in tables["skipped"]["file"].iloc[0]
    levels = tables["levels"]
    assert set(levels["duration min s"]) == {"2.500"} and set(levels["clipped fraction max"]) == {"0.000"}
    # Tone + noise at 0.3 and 0.1 of full scale (conftest.tone_noise): RMS about -13.5 dBFS.
    assert all(-15 < float(v) < -12 for v in levels["RMS dBFS mean"]), levels
    text = page.read_text()
    assert text.count("<audio") >= 4 and "http://" not in text and "https://" not in text


def test_explore_from_raw_files_counts_the_same(odd_dataset, tmp_path) -> None:
    done = CliRunner().invoke(main, ["explore", "--raw-dir", str(odd_dataset["raw"]), "--out", str(tmp_path),
                                     "--examples", "3", "--least-typical", "2", "--max-page-mb", "0.5"])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "tiny.html").read_text()
    # The media budget holds: audio stops being embedded, and the page says so.
    assert "audio left out" in text and len(text) < 0.6 * 2**20 and text.count("<audio") < 12
    tables = page_tables(tmp_path / "tiny.html")
    assert tables["counts-full"].astype({"clips": int})["clips"].sum() == 14
    assert tables["atypical-pump"]["clip"].iloc[0].endswith("_0050_spd_9.wav")
    assert any("0060_spd_0.wav" in f for f in tables["skipped"]["file"])


def test_explore_refuses_bad_options(tmp_path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["explore", "--processed-dir", str(tmp_path), "--raw-dir", str(tmp_path)])
    assert done.exit_code == 2 and "not both" in done.output
    done = runner.invoke(main, ["explore", "--processed-dir", str(tmp_path / "missing")])
    assert done.exit_code == 2 and "data_prep" in done.output
    done = runner.invoke(main, ["explore", "--processed-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert done.exit_code == 2 and "nothing to explore" in done.output and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_runs(ae_run, tmp_path_factory) -> dict[str, Path]:
    """The session's autoencoder run (a model with a loss curve) and a copy of it (a second run to compare),
    side by side in an output folder of their own."""
    run, done = ae_run
    assert f"report: {run / 'report.html'}" in done.stdout
    base = tmp_path_factory.mktemp("runs")
    for name in ("run0", "run1"):
        shutil.copytree(run, base / "output" / name)
    return {"base": base, "run0": base / "output" / "run0", "run1": base / "output" / "run1"}


def test_run_report_holds_the_run_figures(tiny_runs) -> None:
    run = tiny_runs["run0"]
    tables = page_tables(run / "report.html")
    summary = pd.read_csv(run / "synth" / "summary.csv", dtype={"section": str})
    shown = tables["summary-synth"]
    assert list(shown.columns) == list(summary.columns) and len(shown) == len(summary)
    for column in ("AUC (source)", "AUC (target)", "pAUC"):
        assert list(shown[column]) == [f"{v:.4f}" for v in summary[column]]
    thresholds = pd.read_csv(run / "thresholds.csv")
    assert len(tables["thresholds"]) == len(thresholds)
    predictions = pd.read_csv(run / "predictions.csv")
    fan = predictions[predictions["machine"] == "fan"]
    worst_normal = fan[fan["label"] == "normal"].nlargest(1, "score")["file_name"].iloc[0]
    wrong = [t for k, t in tables.items() if k.startswith("wrong-synth-fan-highest")][0]
    assert wrong["file_name"].iloc[0] == worst_normal
    text = (run / "report.html").read_text()
    assert len(re.findall(r"<audio", text)) == 12  # 3 normals + 3 anomalies x 2 machine types
    assert "Not found in the test shards" not in text


def test_summarize_writes_the_comparison_page(tiny_runs, tmp_path) -> None:
    runs = [str(tiny_runs["run0"]), str(tiny_runs["run1"])]
    done = CliRunner().invoke(main, ["summarize", *runs])
    assert done.exit_code == 0, done.output
    page = tiny_runs["base"] / "output" / "compare.html"
    assert f"page: {page}" in done.output
    comparison = page_tables(page)["comparison"]
    assert {"run0 / AUC (source)", "run1 / AUC (source)"} <= set(comparison.columns)
    done = CliRunner().invoke(main, ["summarize", *runs, "--html", str(tmp_path / "c.html")])
    assert done.exit_code == 0 and (tmp_path / "c.html").is_file()


# --- in a real browser ---------------------------------------------------------------------------

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    if CHROMIUM is None or DRIVER is None:
        return "no Chromium / chromedriver (apt-get install chromium chromium-driver; scripts/test.sh does it as root)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def make_driver(width: int = 1280, height: int = 900):
    """A headless Chromium driven through the Debian chromedriver (no download, no network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def driver():
    browser = make_driver()
    yield browser
    browser.quit()


def open_and_check(driver, path: Path) -> None:
    """Load a page; assert every image decoded, every audio element has a wav source, no console error."""
    driver.get(Path(path).resolve().as_uri())
    driver.execute_script("return document.readyState")
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert images, f"{path} has no image"
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"images not loaded in {path}: {broken}"
    sources = driver.execute_script(
        "return Array.from(document.querySelectorAll('audio')).map(a => a.querySelector('source') ? "
        "a.querySelector('source').src.slice(0, 22) : '');")
    assert all(s.startswith("data:audio/wav;base64,") for s in sources), sources
    # The browser can decode the first clip: its duration becomes known once the metadata is loaded.
    if sources:
        duration = driver.execute_async_script(
            "const done = arguments[0]; const a = document.querySelector('audio'); a.preload = 'metadata';"
            "a.addEventListener('loadedmetadata', () => done(a.duration)); a.load();"
            "setTimeout(() => done(-1), 5000);")
        assert duration > 0, "audio could not be decoded"
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def dom_table(driver, table_id: str) -> pd.DataFrame:
    """A table read back from the DOM: header texts, and each cell's exact value (data-value) or text."""
    rows = driver.execute_script(
        "const t = document.getElementById(arguments[0]); if (!t) return null;"
        "return Array.from(t.rows).map(r => Array.from(r.cells).map("
        "c => c.dataset.value !== undefined ? c.dataset.value : c.textContent));", table_id)
    assert rows, f"no table {table_id}"
    return pd.DataFrame(rows[1:], columns=rows[0])


@needs_browser
def test_explore_page_in_browser(driver, odd_dataset, tmp_path) -> None:
    done = CliRunner().invoke(main, ["explore", "--processed-dir", str(odd_dataset["processed"]),
                                     "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    open_and_check(driver, tmp_path / "tiny.html")
    counts = dom_table(driver, "counts-full")
    assert counts["clips"].astype(float).sum() == 14
    assert driver.execute_script("return document.querySelectorAll('audio').length") >= 4


@needs_browser
def test_run_report_in_browser(driver, tiny_runs) -> None:
    run = tiny_runs["run0"]
    open_and_check(driver, run / "report.html")
    summary = pd.read_csv(run / "synth" / "summary.csv", dtype={"section": str})
    shown = dom_table(driver, "summary-synth")
    assert list(shown.columns) == list(summary.columns)
    for column in summary.columns:
        if column in ("machine", "section"):
            assert list(shown[column]) == list(summary[column])
        else:  # the exact doubles written to summary.csv
            pd.testing.assert_series_equal(shown[column].astype(float), summary[column].astype(float),
                                           check_names=False)
    official = pd.read_csv(run / "synth" / "official_score.csv")
    shown = dom_table(driver, "official-synth").set_index("metric")["value"]
    expected = official.set_index("metric")["value"]
    assert float(shown["official score"]) == float(expected["official score"])
    thresholds = pd.read_csv(run / "thresholds.csv")
    shown = dom_table(driver, "thresholds")
    assert list(shown["threshold"].astype(float)) == list(thresholds["threshold"].astype(float))
    assert driver.execute_script("return document.querySelectorAll('audio').length") == 12


@needs_browser
def test_comparison_page_in_browser(driver, tiny_runs) -> None:
    done = CliRunner().invoke(main, ["summarize", str(tiny_runs["run0"]), str(tiny_runs["run1"])])
    assert done.exit_code == 0, done.output
    page = next(line.split("page: ", 1)[1] for line in done.output.splitlines() if line.startswith("page: "))
    open_and_check(driver, Path(page))
    table = dom_table(driver, "comparison")
    summary = pd.read_csv(tiny_runs["run1"] / "synth" / "summary.csv", dtype={"section": str})
    shown = table[table["machine"] != "ALL"]["run1 / AUC (source)"].astype(float).tolist()
    assert shown == summary["AUC (source)"].astype(float).tolist()
