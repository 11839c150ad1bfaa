"""`explore`: one self-contained HTML page per dataset showing what is in it, before any training.

Reads the cached shards (or, with a raw folder, decodes the wav files as data_prep would). Two streaming
passes: the first counts clips, measures levels, sums spectra per group and keeps a few example clips;
the second measures each training clip's distance to its group's mean spectrum. Memory does not grow with
the number of clips (see `clip_reader` and `explore_stats`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from asd.cache.clips import ClipData, iter_raw_clips, iter_shard_clips
from asd.cache.store import SUMMARY_NAME
from asd.cache.store import summary_path as prep_summary_path
from asd.errors import MAIN_COMMAND, PREP_COMMAND, BadInput, DamagedFile
from asd.readback import read_json_object
from asd.reports.explore_stats import RMS_BINS, DatasetStats, Distances
from asd.reports.html import MediaBudget, esc, page, slug, spectrogram_figure, table, write_page


class ExploreError(BadInput):
    """Nothing to explore, or options that cannot work."""


@dataclass(frozen=True)
class ExploreConfig:
    """Where to read, what to show, where to write."""

    processed_dir: Path | None = Path("data/processed")
    raw_dir: Path | None = None
    machines: tuple[str, ...] = ()
    out_dir: Path = Path("output/explore")
    examples: int = 1  # example clips per machine x split x domain x label
    audio_seconds: float = 2.0
    least_typical: int = 3  # training clips per machine type, farthest from their group's mean spectrum
    max_page_mb: float = 5.0


@dataclass
class Unit:
    """One shard (or the raw clips of one machine x split folder) of a dataset."""

    dataset: str
    machine: str
    split: str
    shard: Path | None = None
    manifest: pd.DataFrame | None = None


def find_units(config: ExploreConfig) -> tuple[list[Unit], list[tuple[str, str]]]:
    """Every unit under the configured folder, and files skipped while scanning a raw folder."""
    machines = list(config.machines) or None
    if config.raw_dir is not None:
        from asd.dataset.layout import scan_raw_root

        manifest, skipped = scan_raw_root(Path(config.raw_dir), machines)
        units = []
        for (dataset, machine, split), part in manifest.groupby(["dataset", "machine", "split_folder"]):
            name = Path(config.raw_dir).resolve().name if dataset == "." else dataset
            units.append(Unit(name, machine, split, manifest=part))
        return units, [(s.path, s.reason) for s in skipped]
    from asd.cache.store import discover

    units = [Unit(found.dataset, found.machine, path.stem, path)
             for found in discover(config.processed_dir, machines)
             for path in ([found.train] if found.train is not None else []) + list(found.tests)]
    return units, []


def _unit_clips(unit: Unit, with_audio: bool, rows=None) -> Iterator[ClipData | tuple[str, str]]:
    if unit.shard is not None:
        yield from iter_shard_clips(unit.shard, with_audio=with_audio, rows=rows)
        return
    from asd.cache.features import FeatureConfig

    manifest = unit.manifest if rows is None else unit.manifest[unit.manifest["path"].isin(rows)]
    yield from iter_raw_clips(manifest, FeatureConfig(), with_audio=with_audio)


def _unit_settings(unit: Unit) -> tuple[int, int]:
    """(sample rate, log-mel hop length) of a unit's clips."""
    if unit.shard is not None:
        from asd.cache.shard import Shard

        attrs = Shard(unit.shard).attrs  # the header checked against its digest
        return int(attrs["sample_rate"]), int(attrs["hop_length"])
    from asd.cache.features import FeatureConfig

    config = FeatureConfig()
    return config.sample_rate, config.hop_length


def _card(clip: ClipData, caption: str, rate: int, hop: int, budget: MediaBudget, seconds: float) -> str:
    fig = spectrogram_figure(clip.logmel, rate, hop, clip.meta["file_name"])
    audio = budget.audio(clip.samples, rate, seconds) if clip.samples is not None else ""
    return f'<div class="card">{budget.picture(fig, clip.meta["file_name"])}<div>{esc(caption)}</div>{audio}</div>'


def _style(split: str, domain: str, label: str) -> str:
    """Colour by domain (source blue, target red, unknown grey); training solid, test normal dashed,
    test anomaly dotted."""
    colour = {"source": "C0", "target": "C3"}.get(domain, "C7")
    if split == "train":
        return f"{colour}-"
    return colour + {"normal": "--", "anomaly": ":"}.get(label, "-.")


def _spectrum_figure(curves: list[tuple[str, np.ndarray, str]], title: str) -> Figure:
    fig = Figure(figsize=(6.2, 3.0))
    ax = fig.add_subplot()
    for label, spectrum, style in curves:
        width = 2.0 if " train " in f" {label} " else 1.0
        ax.plot(np.arange(len(spectrum)), spectrum, style, linewidth=width, label=label,
                alpha=0.9 if width > 1 else 1.0)
    ax.set(xlabel="mel bin", ylabel="mean log-mel (dB)", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout(pad=0.4)
    return fig


def _level_figure(stats: DatasetStats, machine: str) -> Figure:
    fig = Figure(figsize=(4.5, 2.6))
    ax = fig.add_subplot()
    centers = (RMS_BINS[:-1] + RMS_BINS[1:]) / 2
    for (m, domain), hist in sorted(stats.rms_hist.items()):
        if m == machine:
            ax.step(centers, hist, where="mid", label=domain)
    ax.set(xlabel="RMS level (dBFS)", ylabel="clips", title=f"{machine}: clip levels")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout(pad=0.4)
    return fig


def _level_row(stats: DatasetStats, machine: str, domain: str) -> dict:
    """One row of the levels table: a machine type and domain's durations and level statistics."""
    def get(stat):
        return stats.levels[(machine, domain, stat)]

    duration, rms, peak = get("duration_s"), get("rms_dbfs"), get("peak_dbfs")
    return {"machine": machine, "domain": domain, "clips": duration.n, "duration min s": duration.lo,
            "duration max s": duration.hi, "RMS dBFS mean": rms.mean, "RMS std": rms.std, "RMS min": rms.lo,
            "RMS max": rms.hi, "peak dBFS mean": peak.mean, "peak max": peak.hi,
            "clipped fraction max": get("clipped_fraction").hi, "silent fraction mean": get("silent_fraction").mean,
            "silent fraction max": get("silent_fraction").hi}


def _seconds(value: object) -> float:
    """A duration from data_prep's summary (0 when it is not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _prep_notes(config: ExploreConfig, dataset: str, scan_skipped: list[tuple[str, str]],
                stats: DatasetStats) -> str:
    parts = []
    summary_path = None
    if config.processed_dir is not None:
        root = Path(config.processed_dir)
        summary_path = next((p for p in (prep_summary_path(root), prep_summary_path(root.parent)) if p.is_file()),
                            None)
    skipped = list(scan_skipped)
    record = None
    if summary_path is not None:
        try:
            record = read_json_object(summary_path, "data_prep's summary", f"the next `{PREP_COMMAND}` writes it again")
        except DamagedFile as err:
            parts.append(f'<p class="note">{esc(err)}</p>')
    if record is not None:
        parts.append(f"<p>From <code>{esc(summary_path)}</code> (last data_prep run): {record.get('clips', 0)} "
                     f"clips, {record.get('segments', 0)} segments, {len(record.get('shards_written', []))} shards "
                     f"written, {len(record.get('shards_skipped', []))} up to date, "
                     f"{_seconds(record.get('seconds')):.1f} s.</p>")
        if isinstance(record.get("notes"), dict) and record["notes"]:
            parts.append(table(pd.DataFrame(sorted(record["notes"].items()), columns=["note", "clips"])))
        skipped += [(str(f["path"]), str(f["reason"])) for f in record.get("files_skipped", [])
                    if isinstance(f, dict) and {"path", "reason"} <= set(f)]
    elif summary_path is None and config.processed_dir is not None:
        parts.append(f'<p class="note">No {SUMMARY_NAME} beside the shards.</p>')
    mine = [(p, r) for p, r in skipped if p.startswith(f"{dataset}/") or f"/{dataset}/" in p]
    parts.append(f"<h3>Files skipped ({len(mine)})</h3>")
    if mine:
        parts.append(table(pd.DataFrame(mine, columns=["file", "reason"]), "skipped"))
    notes = pd.DataFrame([(m, n, c) for (m, n), c in sorted(stats.notes.items())],
                         columns=["machine", "note", "clips"])
    parts.append(f"<h3>Clip-table notes ({int(notes['clips'].sum()) if len(notes) else 0})</h3>")
    if len(notes):
        parts.append(table(notes))
        parts.append(f"<p>First {len(stats.noted)} clips with notes:</p>")
        parts.append(table(pd.DataFrame(stats.noted, columns=["machine", "split", "clip", "notes"])))
    return "".join(parts)


def explore_dataset(config: ExploreConfig, dataset: str, units: list[Unit],
                    scan_skipped: list[tuple[str, str]]) -> tuple[Path, int]:
    """Write the page of one dataset; returns its path and the number of clips read."""
    budget = MediaBudget(int(config.max_page_mb * 2**20))
    stats = DatasetStats()
    examples: dict[str, list[str]] = defaultdict(list)
    taken: dict[tuple, int] = defaultdict(int)
    bad: list[tuple[str, str]] = []
    settings = {id(u): _unit_settings(u) for u in units}
    for unit in units:  # pass 1
        rate, hop = settings[id(unit)]
        for clip in _unit_clips(unit, with_audio=True):
            if isinstance(clip, tuple):
                bad.append(clip)
                continue
            meta = clip.meta
            stats.add(meta, clip.samples, clip.logmel.mean(axis=1), rate, clip.covered)
            group = (meta["machine"], meta["split"], meta["domain"], meta["label"])
            if taken[group] < config.examples:
                taken[group] += 1
                caption = f"{meta['split']} {meta['domain']} {meta['label']}  {meta['attributes']}"
                examples[meta["machine"]].append(_card(clip, caption, rate, hop, budget, config.audio_seconds))
    distances = Distances(k=config.least_typical)
    train_units = [u for u in units if u.split == "train"]
    for index, unit in enumerate(train_units):  # pass 2: spectra only
        for clip in _unit_clips(unit, with_audio=False):
            if isinstance(clip, tuple):
                continue
            meta = clip.meta
            group = (meta["machine"], meta["section"], meta["domain"])
            mean = stats.spectra[("train", *group)].mean
            distances.add(group, mean, clip.logmel.mean(axis=1), f"{index}|{clip.key}|{meta['file_name']}")
    sections = _sections(config, dataset, stats, distances, examples, train_units, settings, budget)
    sections.append(("data_prep notes and skipped files",
                     _prep_notes(config, dataset, scan_skipped + bad, stats)))
    source = config.raw_dir if config.raw_dir is not None else config.processed_dir
    intro = (f"<p>{stats.n_clips} clips read from <code>{esc(source)}</code> "
             f"({'wav files' if config.raw_dir is not None else 'HDF5 shards'}). Made by "
             f"<code>{esc(MAIN_COMMAND)} explore</code>. Embedded media: {budget.used / 2**20:.1f} MB"
             + (f"; {budget.refused} audio clip(s) left out to stay under {config.max_page_mb:g} MB"
                if budget.refused else "") + ".</p>")
    name = dataset.replace("/", "_")
    path = write_page(Path(config.out_dir) / f"{name}.html", page(f"Dataset {dataset}", intro, sections))
    return path, stats.n_clips


def _sections(config, dataset, stats: DatasetStats, distances: Distances, examples, train_units, settings,
              budget: MediaBudget) -> list[tuple[str, str]]:
    counts = pd.DataFrame([(*k, v) for k, v in stats.counts.items()],
                          columns=["machine", "section", "domain", "attributes", "split", "label", "clips"])
    machines = sorted(counts["machine"].unique())
    overview = counts.pivot_table(index=["machine", "split", "domain"], columns="label", values="clips",
                                  aggfunc="sum", fill_value=0)
    overview.columns = [str(c) for c in overview.columns]
    full = counts.assign(column=counts["split"] + " " + counts["label"]).pivot_table(
        index=["machine", "section", "domain", "attributes"], columns="column", values="clips", aggfunc="sum",
        fill_value=0)
    full = full.assign(clips=full.sum(axis=1)).reset_index()
    full.columns = [str(c) for c in full.columns]
    out = [("Counts", "<p>Clips per machine type, split, domain and label:</p>"
            + table(overview.reset_index(), "counts-overview")
            + "<p>Clips per machine type, section, domain and attributes, by split and label:</p>"
            + table(full, "counts-full"))]
    rates = pd.DataFrame([(*k, v) for k, v in sorted(stats.rates.items())],
                         columns=["machine", "original sample rate", "original channels", "clips"])
    levels = pd.DataFrame([_level_row(stats, m, d) for m, d in sorted({k[:2] for k in stats.levels})])
    outliers = pd.DataFrame(stats.outliers(), columns=["machine", "domain", "statistic", "clip", "value", "z"])
    level_figs = "".join(budget.figure(_level_figure(stats, m), f"{m} levels") for m in machines)
    partial = (f"<p class='note'>{stats.partial} clip(s) are only partly stored in the shards "
               "(tail=drop); their levels cover the stored samples.</p>" if stats.partial else "")
    out.append(("Durations, sample rates, levels",
                table(rates, "rates") + partial + table(levels, "levels", digits=3)
                + f'<div class="grid">{level_figs}</div>'
                + "<h3>Outliers</h3><p>Clips more than 3 standard deviations from their machine type and "
                  "domain's mean duration, RMS or peak level; clips with any sample at full scale; clips "
                  "silent (below -60 dBFS) half of the time or more.</p>"
                + (table(outliers, "outliers", digits=3) if len(outliers) else "<p>None.</p>")))
    spectra = []
    for machine in machines:
        curves = [(f"{k[2]} {k[3]} {k[4]} (n={s.n})", s.mean, _style(k[2], k[3], k[4]))
                  for k, s in sorted(stats.spectra.items()) if k[0] == "group" and k[1] == machine]
        figs = [budget.figure(_spectrum_figure(curves, f"{machine}: split, domain, label"), machine)]
        params = sorted({k[2] for k in stats.spectra if k[0] == "attr" and k[1] == machine})
        for param in params:
            groups = sorted(((k, s) for k, s in stats.spectra.items() if k[:3] == ("attr", machine, param)),
                            key=lambda item: -item[1].n)[:10]
            curves = [(f"{k[3]} {k[4]} (n={s.n})", s.mean, "-" if k[4] == "source" else ":")
                      for k, s in sorted(groups)]
            figs.append(budget.figure(_spectrum_figure(curves, f"{machine}: {param} (normal clips)"),
                                      f"{machine} {param}"))
        spectra.append(f"<h3>{esc(machine)}</h3><div class='grid'>{''.join(figs)}</div>")
    out.append(("Mean log-mel spectra", "<p>Mean over clips of each clip's mean log-mel frame: per split, "
                "domain and label (source blue, target red; training solid and thick, test normal dashed, test "
                "anomaly dotted), then per attribute value (normal clips; solid source, dotted target; the "
                "ten most frequent values). A gap between source and target curves is the domain shift.</p>"
                + "".join(spectra)))
    out.append(("Example clips", "".join(
        f"<h3>{esc(m)}</h3><div class='grid'>{''.join(examples[m])}</div>" for m in machines)
        + f"<p class='note'>{config.examples} clip(s) per split, domain and label; the audio is the first "
          f"{config.audio_seconds:g} s.</p>"))
    atypical = []
    for machine in machines:
        rows = distances.least_typical(machine, config.least_typical)
        if not rows:
            continue
        cards = []
        for row in rows:
            index, key, name = row["ref"].split("|", 2)
            unit = train_units[int(index)]
            rate, hop = settings[id(unit)]
            wanted = [int(key)] if unit.shard is not None else [key]
            for clip in _unit_clips(unit, with_audio=True, rows=wanted):
                if not isinstance(clip, tuple):
                    cards.append(_card(clip, f"section {row['section']} {row['domain']}: "
                                             f"{row['distance_db']:.2f} dB (z {row['z']:.1f})",
                                       rate, hop, budget, config.audio_seconds))
            row["clip"] = name
        frame = pd.DataFrame(rows)[["clip", "section", "domain", "distance_db", "z", "group_clips",
                                    "group_mean_db"]]
        atypical.append(f"<h3>{esc(machine)}</h3>{table(frame, f'atypical-{slug(machine)}', 3)}"
                        f"<div class='grid'>{''.join(cards)}</div>")
    out.append(("Least typical training clips", "<p>Training clips farthest from the mean spectrum of "
                "their machine type, section and domain (RMS difference of mean log-mel frames, dB; z within "
                "the group). Labelling mistakes and broken recordings hide here.</p>" + "".join(atypical)))
    return out


def explore(config: ExploreConfig, echo: Callable[[str], None] = print) -> list[Path]:
    """Write one page per dataset found; returns the pages."""
    units, scan_skipped = find_units(config)
    if not units:
        where = config.raw_dir if config.raw_dir is not None else config.processed_dir
        what = "wav files in a DCASE layout" if config.raw_dir is not None else \
            f"shards (run `{PREP_COMMAND}` first)"
        machines = f" for machine types {', '.join(config.machines)}" if config.machines else ""
        raise ExploreError(f"nothing to explore under {where}{machines}: no {what}")
    by_dataset: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        by_dataset[unit.dataset].append(unit)
    pages = []
    for dataset, group in sorted(by_dataset.items()):
        start = time.perf_counter()
        path, n_clips = explore_dataset(config, dataset, group, scan_skipped)
        echo(f"explore: {dataset}: {n_clips} clips, {len({u.machine for u in group})} machine type(s) -> {path} "
             f"({path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - start:.1f} s")
        pages.append(path)
    return pages
