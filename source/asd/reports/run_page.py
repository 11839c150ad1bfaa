"""The run report (`<run>/report.html`) and the comparison page of several runs (`summarize`).

Nothing is recomputed here: the pages show the files the test stage wrote (summary.csv,
official_score.csv, thresholds.csv, predictions.csv, roc.png, score_histogram.png, loss.png) and, for the
clips the detector got most wrong, their log-mel and audio read back from the test shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from asd.cache.clips import find_clip_rows, iter_shard_clips
from asd.cache.shard import Shard
from asd.cache.store import machine_data
from asd.errors import MAIN_COMMAND, AsdError
from asd.reports.html import MediaBudget, esc, page, slug, spectrogram_figure, table, write_page
from asd.run_folder import RunFolder


def _test_shards(processed_dir: str, dataset: str, machine: str) -> list[Path]:
    """The test shards a machine type was scored on (every split but train)."""
    found = machine_data(processed_dir, dataset, machine) if processed_dir and Path(processed_dir).is_dir() else None
    return list(found.tests) if found is not None else []


def _clip_cards(shards: list[Path], rows: pd.DataFrame, budget: MediaBudget, seconds: float) -> str:
    """Spectrogram and audio of the listed predictions rows, read from the test shards."""
    wanted = set(rows["file_name"])
    cards: dict[str, str] = {}
    problems: list[str] = []
    for shard in shards:
        try:  # a shard damaged since it was scored costs its pictures, not the page
            found = find_clip_rows(shard, wanted - set(cards))
            if not found:
                continue
            attrs = Shard(shard).attrs
            rate, hop = int(attrs["sample_rate"]), int(attrs["hop_length"])
            for clip in iter_shard_clips(shard, with_audio=True, rows=list(found.values())):
                name = clip.meta["file_name"]
                row = rows[rows["file_name"] == name].iloc[0]
                caption = (f"{row['domain']} {row['label']}: score {row['score']:.4g} "
                           f"(threshold {row['threshold']:.4g})")
                fig = spectrogram_figure(clip.logmel, rate, hop, name)
                cards[name] = (f'<div class="card">{budget.picture(fig, name)}<div>{esc(caption)}</div>'
                               f"{budget.audio(clip.samples, rate, seconds)}</div>")
        except AsdError as err:
            problems.append(str(err))
    missing = [n for n in rows["file_name"] if n not in cards]
    note = (f"<p class='note'>Not found in the test shards ({len(missing)}): {esc(', '.join(missing))}</p>"
            if missing else "") + "".join(f"<p class='note'>{esc(problem)}</p>" for problem in problems)
    return f"<div class='grid'>{''.join(cards[n] for n in rows['file_name'] if n in cards)}</div>{note}"


def _most_wrong(predictions: pd.DataFrame, k: int) -> list[tuple[str, pd.DataFrame]]:
    labelled = predictions[predictions["label"].isin(["normal", "anomaly"])]
    if labelled.empty:
        return [("Highest-scored clips (test labels unknown)", predictions.nlargest(k, "score"))]
    normals = labelled[labelled["label"] == "normal"].nlargest(k, "score")
    anomalies = labelled[labelled["label"] == "anomaly"].nsmallest(k, "score")
    return [("Highest-scored normal clips", normals), ("Lowest-scored anomalous clips", anomalies)]


def _machine_section(folder: RunFolder, dataset: str, machine: str, predictions: pd.DataFrame,
                     processed_dir: str, budget: MediaBudget, k: int, seconds: float) -> str:
    plots = (folder.roc_png(dataset, machine), folder.histogram_png(dataset, machine),
             folder.oof_png(dataset, machine), folder.loss_png(dataset, machine))
    images = "".join(budget.file_img(path, f"{machine} {path.name}", "plot") for path in plots)
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


def run_settings(folder: RunFolder) -> dict[str, object]:
    """The settings a page shows for a run: the model, its own options, and the run settings that apply to
    it (a model that trains no network has no epochs or patience to show)."""
    config, run = folder.read_config(), folder.run_record()
    fit = dict(run.get("fit", {}))
    applies = config.get("applies", list(fit))
    options = {"model_options": run["model_options"]} if run.get("model_options") else {}
    return {"model": run.get("model", "?"), **options,
            **{k: run[k] for k in ("val_fraction", "threshold_method", "threshold_percentile") if k in run},
            **{k: v for k, v in fit.items() if k in applies}}


def write_run_report(run: RunFolder | Path, examples: int = 3, audio_seconds: float = 3.0,
                     max_page_mb: float = 8.0) -> Path:
    """Write `<run>/report.html` from the run's files; returns its path."""
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    budget = MediaBudget(int(max_page_mb * 2**20))
    processed_dir = str(folder.run_record().get("processed_dir", ""))
    predictions = folder.read_predictions()
    sections = []
    for dataset in folder.datasets():
        summary = folder.read_summary(dataset)
        official = folder.read_official_scores(dataset)
        official["value"] = [_number(v) for v in official["value"]]
        sections.append((f"Summary: {dataset}",
                         table(official, f"official-{slug(dataset)}", 4)
                         + table(summary, f"summary-{slug(dataset)}", 4)))
    thresholds = folder.read_thresholds()
    if thresholds is not None:
        sections.append(("Thresholds and expected false alarms",
                         "<p>Per machine type, section and domain (\"*\": pooled) from the out-of-fold scores "
                         "of all normal training clips: each clip scored by models that never saw it, so no "
                         "test label is needed. The expected false-alarm rate is cross-fitted (threshold "
                         "fitted on one half, counted on the other) with its 95 % Wilson interval; "
                         "<code>fitted_on</code> names the broader key used where a domain has too few clips. "
                         "The out-of-fold score distributions are drawn per machine type below "
                         "(oof_scores.png).</p>" + table(thresholds, "thresholds", 4)))
    for (dataset, machine), part in predictions.groupby(["dataset", "machine"], sort=True):
        sections.append((f"{dataset}/{machine}", _machine_section(
            folder, dataset, machine, part, processed_dir, budget, examples, audio_seconds)))
    settings = run_settings(folder)
    intro = ("<p>Run <code>" + esc(folder.path) + "</code>: " + esc(", ".join(f"{k}={v}" for k, v in settings.items()))
             + ". ROC curves, score histograms (thresholds as vertical lines) and loss curves per machine "
               "type; the test clips the detector got most wrong with their log-mel and audio.</p>")
    return write_page(folder.report_html, page(f"Run {folder.path.name}", intro, sections))


def _number(text: str) -> object:
    """A number written in a CSV as the float it reads back to; other text unchanged."""
    try:
        return float(text)
    except ValueError:
        return text


def write_comparison_page(runs: list[Path], path: Path) -> Path:
    """One page comparing runs: settings, official scores, metrics side by side, ROC curves per machine."""
    from asd.reports.summary import comparison_frame, run_scores

    path = Path(path)
    budget = MediaBudget(64 * 2**20)
    rows = []
    for run in runs:
        folder = RunFolder(run)
        settings = run_settings(folder)
        link = (f'<a href="{esc(os.path.relpath(folder.report_html, path.parent))}">{esc(folder.path.name)}</a>'
                if folder.report_html.is_file() else esc(folder.path.name))
        scores = run_scores(folder.path)
        official = scores[scores["metric"] == "official score"]
        rows.append(f"<tr><td>{link}</td><td>{esc(settings['model'])}</td>"
                    f"<td>{esc(settings.get('epochs', '—'))}</td><td>{esc(settings.get('seed'))}</td><td>"
                    + esc("; ".join(f"{r.dataset}: {r.value:.4f}" for r in official.itertuples()))
                    + "</td></tr>")
    runs_table = ("<table class='data' id='runs'><thead><tr><th>run</th><th>model</th><th>epochs</th>"
                  f"<th>seed</th><th>official score</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    sections = [("Runs", runs_table)]
    frame = comparison_frame(runs)
    if frame is not None:
        sections.append(("Metrics side by side", table(frame, "comparison", 4, index=True, na="")))
    machines = sorted({(dataset, machine) for run in runs for dataset, machine in RunFolder(run).trained()
                       if RunFolder(run).roc_png(dataset, machine).is_file()})
    for dataset, machine in machines:
        images = [budget.file_img(RunFolder(run).roc_png(dataset, machine), machine, "plot") for run in runs]
        cards = "".join(f"<div class='card'>{image}<div>{esc(Path(run).name)}</div></div>"
                        for run, image in zip(runs, images, strict=True))
        sections.append((f"ROC {dataset}/{machine}", f"<div class='grid'>{cards}</div>"))
    intro = f"<p>{len(runs)} run(s), made by <code>{esc(MAIN_COMMAND)} summarize</code>.</p>"
    return write_page(path, page("Runs compared", intro, sections))


def default_comparison_path(runs: list[Path]) -> Path:
    """`<common parent of the runs>/compare.html` (output/compare.html for runs under output/); when that
    page exists already, the first free `compare-<n>.html` beside it, so no earlier comparison is lost."""
    parents = [str(Path(run).resolve().parent) for run in runs]
    path = Path(os.path.commonpath(parents)) / "compare.html"
    n = 2
    while path.exists():
        path = path.with_name(f"compare-{n}.html")
        n += 1
    return path
