"""Whole clips back out of a shard (or a raw folder), streamed in bounded chunks.

A shard stores 1-second segments; the pages want clips: their samples (to measure levels and to play them)
and their log-mel frames. Segments are put back at their start samples, so overlapping tail segments and
zero padding are undone exactly. Reading goes a chunk of clips at a time (at most `max_segments` segments
in memory, never the whole shard), including the clip table's columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from asd.cache.shard import Shard

META_COLUMNS = ("file_name", "rel_path", "machine", "section", "domain", "split", "label", "attributes",
                "n_samples", "original_sample_rate", "original_channels", "notes")


@dataclass
class ClipData:
    """One clip: its clip-table fields, mono int16 samples (None when not asked for) and log-mel frames."""

    key: object  # clip index in a shard, or the wav path for a raw clip
    meta: dict
    samples: np.ndarray | None
    logmel: np.ndarray  # [n_mels, frames]
    covered: int  # samples of the clip present in the shard (less than n_samples under tail=drop)


def _column(file: h5py.File, name: str, rows: slice) -> np.ndarray:
    dataset = file[f"clips/{name}"]
    return dataset.asstr()[rows] if dataset.dtype.kind == "O" else dataset[rows]


def _assemble(meta: dict, starts: np.ndarray, waves: np.ndarray | None, mels: np.ndarray,
              hop_length: int, key: object) -> ClipData:
    n = int(meta["n_samples"])
    samples, covered = None, 0
    if waves is not None:
        samples = np.zeros(n, dtype=np.int16)
        mask = np.zeros(n, dtype=bool)
        for start, wave in zip(starts, waves, strict=True):
            start = int(start)
            end = min(start + len(wave), n)
            if end > start:
                samples[start:end] = wave[: end - start]
                mask[start:end] = True
        covered = int(mask.sum())
        if covered < n:  # a tail dropped (tail=drop) or hop > segment: keep only the samples really stored
            samples = samples[mask]
    # Frames by start sample: overlapping segments carry identical frames (log-mel of the whole clip).
    frames_per_segment = mels.shape[2]
    width = max(int(np.ceil(n / hop_length)), frames_per_segment)
    logmel = np.empty((mels.shape[1], width), dtype=np.float32)
    filled = np.zeros(width, dtype=bool)
    for start, mel in zip(starts, mels, strict=True):
        first = min(int(round(int(start) / hop_length)), width - frames_per_segment)
        logmel[:, first:first + frames_per_segment] = mel
        filled[first:first + frames_per_segment] = True
    return ClipData(key, meta, samples, logmel[:, filled], covered)


def iter_shard_clips(path: Path, with_audio: bool = True, max_segments: int = 512,
                     rows: np.ndarray | None = None, block: int = 256) -> Iterator[ClipData]:
    """Every clip of a shard in order (or only the clip indices `rows`), a bounded chunk at a time:
    clip-table columns `block` rows at a time, segments at most `max_segments` at a time (at least one clip).
    The tables are checked against their digests first and every data row as it is read (`DamagedFile`)."""
    shard = Shard(path)
    shard.check_tables()
    with contextlib.closing(shard):
        file = shard.file
        hop_length = int(file.attrs["hop_length"])
        n_clips = int(file["clips/n_segments"].shape[0])
        if rows is None:
            ranges = [(lo, min(lo + block, n_clips)) for lo in range(0, n_clips, block)]
        else:
            ranges = [(int(r), int(r) + 1) for r in sorted(set(int(r) for r in rows))]
        for lo, hi in ranges:
            columns = {name: _column(file, name, slice(lo, hi))
                       for name in (*META_COLUMNS, "first_segment", "n_segments")}
            firsts, counts = columns["first_segment"], columns["n_segments"]
            k = 0
            while k < hi - lo:
                end, total = k + 1, int(counts[k])
                while end < hi - lo and total + int(counts[end]) <= max_segments:
                    total += int(counts[end])
                    end += 1
                first = int(firsts[k])
                seg_rows = slice(first, first + total)
                starts = file["segments/start_sample"][seg_rows]
                mels = shard.logmel(seg_rows)
                waves = shard.waveform(seg_rows) if with_audio else None
                for j in range(k, end):
                    meta = {name: _py(columns[name][j]) for name in META_COLUMNS}
                    a = int(firsts[j]) - first
                    b = a + int(counts[j])
                    yield _assemble(meta, starts[a:b], None if waves is None else waves[a:b], mels[a:b],
                                    hop_length, lo + j)
                del starts, mels, waves  # let go of this chunk before the next one is read
                k = end


def find_clip_rows(path: Path, file_names: set[str]) -> dict[str, int]:
    """Clip indices of the given file names in a shard (its name column, checked against its digest)."""
    shard = Shard(path)
    with contextlib.closing(shard):
        names = shard.clip_column("file_name")
    return {name: index for index, name in enumerate(names) if name in file_names}


def iter_raw_clips(manifest, config, with_audio: bool = True) -> Iterator[ClipData | tuple[str, str]]:
    """Clips decoded from wav files (a `layout.scan_raw_root` manifest), as data_prep decodes them.

    Yields ClipData, or `(rel_path, reason)` for a file that cannot be decoded.
    """
    from asd.cache.audio import BadAudio, read_clip
    from asd.cache.features import log_mel

    for row in manifest.itertuples(index=False):
        try:
            clip = read_clip(row.path, config)
        except BadAudio as err:
            yield (row.rel_path, str(err))
            continue
        meta = {"file_name": row.file_name, "rel_path": row.rel_path, "machine": row.machine,
                "section": row.section, "domain": row.domain, "split": row.split, "label": row.label,
                "attributes": row.attributes, "n_samples": len(clip.samples),
                "original_sample_rate": clip.original_sample_rate,
                "original_channels": clip.original_channels, "notes": "; ".join(clip.notes)}
        mel = log_mel(clip.samples[None, :], config)[0]
        yield ClipData(row.path, meta, clip.samples if with_audio else None, mel, len(clip.samples))


def _py(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
