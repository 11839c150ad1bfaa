"""The run report (`<run>/report.html`) and the comparison page of several runs (`summarize`).

Nothing is recomputed here: the pages show the files the test stage wrote (summary.csv,
official_score.csv, thresholds.csv, predictions.csv, roc.png, score_histogram.png, loss.png) and, for the
clips the detector got most wrong, their log-mel and audio read back from the test shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from asd.cache.clips import find_clip_rows, iter_shard_clips
from asd.reports.html import MediaBudget, esc, page, slug, spectrogram_figure, table, write_page

REPORT_NAME = "report.html"


def _datasets(run_dir: Path) -> list[str]:
    """Datasets of a run: folders holding a summary.csv (the test stage wrote them)."""
    return sorted(p.parent.relative_to(run_dir).as_posix() for p in Path(run_dir).rglob("summary.csv"))


def _config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _test_shards(processed_dir: str, dataset: str, machine: str) -> list[Path]:
    """The test shards a machine type was scored on (every split but train)."""
    root = Path(processed_dir)
    for folder in (root / dataset / machine, root / machine):
        if folder.is_dir() and (folder != root / machine or root.resolve().name == dataset):
            return sorted(p for p in folder.glob("*.h5") if p.stem != "train" and not p.name.startswith("."))
    return []


def _clip_cards(shards: list[Path], rows: pd.DataFrame, budget: MediaBudget, seconds: float) -> str:
    """Spectrogram and audio of the listed predictions rows, read from the test shards."""
    import h5py

    wanted = set(rows["file_name"])
    cards: dict[str, str] = {}
    for shard in shards:
        found = find_clip_rows(shard, wanted - set(cards))
        if not found:
            continue
        with h5py.File(shard, "r") as file:
            rate, hop = int(file.attrs["sample_rate"]), int(file.attrs["hop_length"])
        for clip in iter_shard_clips(shard, with_audio=True, rows=list(found.values())):
            name = clip.meta["file_name"]
            row = rows[rows["file_name"] == name].iloc[0]
            caption = (f"{row['domain']} {row['label']}: score {row['score']:.4g} "
                       f"(threshold {row['threshold']:.4g})")
            fig = spectrogram_figure(clip.logmel, rate, hop, name)
            cards[name] = (f'<div class="card">{budget.picture(fig, name)}<div>{esc(caption)}</div>'
                           f"{budget.audio(clip.samples, rate, seconds)}</div>")
    missing = [n for n in rows["file_name"] if n not in cards]
    note = (f"<p class='note'>Not found in the test shards ({len(missing)}): {esc(', '.join(missing))}</p>"
            if missing else "")
    return f"<div class='grid'>{''.join(cards[n] for n in rows['file_name'] if n in cards)}</div>{note}"


def _most_wrong(predictions: pd.DataFrame, k: int) -> list[tuple[str, pd.DataFrame]]:
    labelled = predictions[predictions["label"].isin(["normal", "anomaly"])]
    if labelled.empty:
        return [("Highest-scored clips (test labels unknown)", predictions.nlargest(k, "score"))]
    normals = labelled[labelled["label"] == "normal"].nlargest(k, "score")
    anomalies = labelled[labelled["label"] == "anomaly"].nsmallest(k, "score")
    return [("Highest-scored normal clips", normals), ("Lowest-scored anomalous clips", anomalies)]


def _machine_section(run_dir: Path, dataset: str, machine: str, predictions: pd.DataFrame,
                     processed_dir: str, budget: MediaBudget, k: int, seconds: float) -> str:
    folder = Path(run_dir) / dataset / machine
    images = "".join(budget.file_img(folder / name, f"{machine} {name}", "plot")
                     for name in ("roc.png", "score_histogram.png", "loss.png"))
    parts = [f"<div class='grid'>{images}</div>"]
    shards = _test_shards(processed_dir, dataset, machine)
    columns = ["file_name", "section", "domain", "label", "score", "threshold", "decision"]
    for title, rows in _most_wrong(predictions, k):
        parts.append(f"<h4>{esc(title)}</h4>")
        parts.append(table(rows[columns], f"wrong-{slug(dataset)}-{slug(machine)}-{slug(title)}", 4))
        if shards:
            parts.append(_clip_cards(shards, rows, budget, seconds))
        else:
            parts.append(f"<p class='note'>Test shards not found under {esc(processed_dir)}: no spectrograms "
                         "or audio.</p>")
    return "".join(parts)


def write_run_report(run_dir: Path, examples: int = 3, audio_seconds: float = 3.0,
                     max_page_mb: float = 8.0) -> Path:
    """Write `<run>/report.html` from the run's files; returns its path."""
    run_dir = Path(run_dir)
    budget = MediaBudget(int(max_page_mb * 2**20))
    config = _config(run_dir)
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"section": str, "file_name": str})
    predictions = _attach_datasets(run_dir, predictions)
    sections = []
    for dataset in _datasets(run_dir):
        summary = pd.read_csv(run_dir / dataset / "summary.csv", dtype={"section": str})
        official = pd.read_csv(run_dir / dataset / "official_score.csv", dtype=str)
        official["value"] = [_number(v) for v in official["value"]]
        sections.append((f"Summary: {dataset}",
                         table(official, f"official-{slug(dataset)}", 4)
                         + table(summary, f"summary-{slug(dataset)}", 4)))
    thresholds_path = run_dir / "thresholds.csv"
    if thresholds_path.is_file():
        thresholds = pd.read_csv(thresholds_path, dtype={"section": str, "note": str, "fitted_on": str})
        for column in ("note", "fitted_on"):
            if column in thresholds:
                thresholds[column] = thresholds[column].fillna("")
        sections.append(("Thresholds and false alarms",
                         "<p>Per machine type and section (\"*\": pooled over sections) from held-out normal "
                         "training clips; the false-alarm rate is cross-fitted (threshold fitted on one half, "
                         "counted on the other).</p>" + table(thresholds, "thresholds", 4)))
    for (dataset, machine), part in predictions.groupby(["dataset", "machine"], sort=True):
        sections.append((f"{dataset}/{machine}", _machine_section(
            run_dir, dataset, machine, part, str(config.get("processed_dir", "")), budget, examples,
            audio_seconds)))
    settings = {"model": config.get("model", "?"), **config.get("train", {})}
    intro = ("<p>Run <code>" + esc(run_dir) + "</code>: " + esc(", ".join(f"{k}={v}" for k, v in settings.items()))
             + ". ROC curves, score histograms (thresholds as vertical lines) and loss curves per machine "
               "type; the test clips the detector got most wrong with their log-mel and audio.</p>")
    return write_page(run_dir / REPORT_NAME, page(f"Run {run_dir.name}", intro, sections))


def _number(text: str) -> object:
    """A number written in a CSV as the float it reads back to; other text unchanged."""
    try:
        return float(text)
    except ValueError:
        return text


def _attach_datasets(run_dir: Path, predictions: pd.DataFrame) -> pd.DataFrame:
    """Give each prediction its dataset (predictions.csv does not list it): the run folder of its machine
    type, or, for a machine type in several datasets, the dataset whose submission files list the clip."""
    from asd.evaluation.submission import predictions_from_submission

    owners: dict[str, list[str]] = {}
    for dataset in _datasets(run_dir):
        for machine in predictions["machine"].unique():
            if (run_dir / dataset / machine).is_dir():
                owners.setdefault(machine, []).append(dataset)
    datasets = predictions["machine"].map(lambda m: owners.get(m, [""])[0])
    shared = [m for m, found in owners.items() if len(found) > 1]
    if shared:
        where = {}
        for dataset in _datasets(run_dir):
            official = pd.read_csv(run_dir / dataset / "official_score.csv").set_index("metric")["value"]
            listed = predictions_from_submission(run_dir / dataset / "submission", str(official["rules"]))
            where.update({(m, f): dataset for m, f in zip(listed["machine"], listed["file_name"], strict=True)})
        keys = zip(predictions["machine"], predictions["file_name"], strict=True)
        datasets = pd.Series([where.get(k, d) for k, d in zip(keys, datasets, strict=True)],
                             index=predictions.index)
    return predictions.assign(dataset=datasets)


def write_comparison_page(runs: list[Path], path: Path) -> Path:
    """One page comparing runs: settings, official scores, metrics side by side, ROC curves per machine."""
    from asd.reports.summary import comparison_frame, run_scores

    path = Path(path)
    budget = MediaBudget(64 * 2**20)
    rows = []
    for run in runs:
        config = _config(run)
        report = Path(run) / REPORT_NAME
        link = (f'<a href="{esc(os.path.relpath(report, path.parent))}">{esc(Path(run).name)}</a>'
                if report.is_file() else esc(Path(run).name))
        scores = run_scores(Path(run))
        official = scores[scores["metric"] == "official score"]
        rows.append(f"<tr><td>{link}</td><td>{esc(config.get('model', '?'))}</td>"
                    f"<td>{esc(config.get('train', {}).get('epochs'))}</td>"
                    f"<td>{esc(config.get('train', {}).get('seed'))}</td><td>"
                    + esc("; ".join(f"{r.dataset}: {r.value:.4f}" for r in official.itertuples()))
                    + "</td></tr>")
    runs_table = ("<table class='data' id='runs'><thead><tr><th>run</th><th>model</th><th>epochs</th>"
                  f"<th>seed</th><th>official score</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    sections = [("Runs", runs_table)]
    frame = comparison_frame(runs)
    if frame is not None:
        sections.append(("Metrics side by side", table(frame, "comparison", 4, index=True, na="")))
    machines = sorted({(d, p.name) for run in runs for d in _datasets(Path(run))
                       for p in (Path(run) / d).iterdir() if p.is_dir() and (p / "roc.png").is_file()})
    for dataset, machine in machines:
        images = [budget.file_img(Path(run) / dataset / machine / "roc.png", machine, "plot") for run in runs]
        cards = "".join(f"<div class='card'>{image}<div>{esc(Path(run).name)}</div></div>"
                        for run, image in zip(runs, images, strict=True))
        sections.append((f"ROC {dataset}/{machine}", f"<div class='grid'>{cards}</div>"))
    intro = f"<p>{len(runs)} run(s), made by <code>python source/main.py summarize</code>.</p>"
    return write_page(path, page("Runs compared", intro, sections))


def default_comparison_path(runs: list[Path]) -> Path:
    """`<common parent of the runs>/compare.html` (output/compare.html for runs under output/)."""
    parents = [str(Path(run).resolve().parent) for run in runs]
    return Path(os.path.commonpath(parents)) / "compare.html"
