"""data_prep: every clip under a raw root → 1-second segments (waveform + log-mel) in HDF5 shards.

Workers (threads by default) decode and compute features for chunks of clips; the main thread is the
only writer, and consumes results as they arrive, so memory stays flat however many clips there are. A shard is reused
only when it was built with the same settings from the same files; other settings are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from asd.audio import BadAudio, read_clip
from asd.features import FeatureConfig, cut_segments, log_mel
from asd.layout import SkippedFile, scan_raw_root
from asd.shard import ShardWriter, StaleShard, read_shard_attrs

CLIPS_PER_TASK = 16  # one task = this many clips: amortises dispatch, bounds the memory in flight


@dataclass(frozen=True)
class PrepConfig:
    """Settings of one data_prep run (the feature settings are written into every shard)."""

    raw_dir: str = "data/raw"
    out_dir: str = "data/processed"
    jobs: int = -1
    machines: tuple[str, ...] = ()
    force: bool = False
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass
class PrepSummary:
    """What a data_prep run did; printed at the end and written as JSON beside the shards."""

    clips: int = 0
    segments: int = 0
    shards_written: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)
    files_skipped: list[SkippedFile] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.clips / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"data_prep: {self.clips} clips -> {self.segments} segments; shards written "
            f"{len(self.shards_written)}, skipped (up to date) {len(self.shards_skipped)}; "
            f"{self.seconds:.1f} s ({rate:.1f} clips/s)"
        ]
        if not self.shards_written and self.shards_skipped:
            out.append("  every shard is up to date: nothing to do (use --force to rebuild)")
        out += [f"  note: {n} clips {what}" for what, n in sorted(self.notes.items())]
        if self.files_skipped:
            out.append(f"  files skipped: {len(self.files_skipped)}")
            out += [f"    {f.path}: {f.reason}" for f in self.files_skipped]
        return out


def shard_path(out_dir: Path, dataset: str, machine: str, split_folder: str) -> Path:
    """data/processed/<dataset>/<machine>/<split>.h5, mirroring the raw tree."""
    return Path(out_dir) / dataset / machine / f"{split_folder}.h5"


def source_digest(clips: pd.DataFrame) -> str:
    """Hash of the shard's input files (relative path, size, modification time)."""
    digest = hashlib.sha256()
    for rel, path in zip(clips["rel_path"], clips["path"], strict=True):
        st = os.stat(path)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def process_clips(paths: list[str], config: FeatureConfig) -> list[tuple | str]:
    """Worker task: decode and featurise clips. Per clip either
    `(waveforms, logmels, starts, n_samples, original_rate, original_channels, notes)` or an error string."""
    return [_process_clip(path, config) for path in paths]


def _process_clip(path: str, config: FeatureConfig) -> tuple | str:
    try:
        clip = read_clip(path, config)
    except BadAudio as err:
        return str(err)
    waves, starts, padded = cut_segments(clip.samples, config)
    notes = list(clip.notes)
    if padded:
        notes.append(f"padded {len(clip.samples)}->{int(starts[-1]) + config.segment_samples} samples")
    return (waves, log_mel(waves, config), starts, len(clip.samples), clip.original_sample_rate,
            clip.original_channels, notes)


def _shard_plan(manifest: pd.DataFrame, cfg: PrepConfig) -> Iterator[tuple[Path, pd.DataFrame, str]]:
    for (dataset, machine, split_folder), clips in manifest.groupby(
            ["dataset", "machine", "split_folder"], sort=True):
        yield shard_path(Path(cfg.out_dir), dataset, machine, split_folder), clips, source_digest(clips)


def check_cache(path: Path, features: FeatureConfig, digest: str) -> str:
    """"build" (no shard yet, or its input files changed) or "skip" (up to date); raises `StaleShard`
    when the existing shard was built with other feature settings, so caches never mix."""
    attrs = read_shard_attrs(path)
    if attrs is None:
        return "build"
    if attrs.get("fingerprint") != features.fingerprint():
        theirs = json.loads(attrs.get("feature_config", "{}"))
        diff = ", ".join(f"{k}: {a} -> {b}" for k, a, b in
                         ((k, *v) for k, v in features.differences(theirs).items()))
        raise StaleShard(
            f"{path} was built with other settings ({diff or 'schema version'}). Rebuild it with --force, "
            "or write the new cache elsewhere with --out-dir."
        )
    return "skip" if attrs.get("source_digest") == digest else "build"


def _remove_stale_partials(path: Path) -> None:
    """Temporary files of this shard left by a killed run (their writer process is gone)."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid_text = partial.name.rsplit(".", 2)[-2]
        try:
            os.kill(int(pid_text), 0)  # no error: the writer still runs (PermissionError: another user's)
        except (ProcessLookupError, ValueError):
            partial.unlink(missing_ok=True)
        except PermissionError:
            pass


def build_shard(path: Path, clips: pd.DataFrame, digest: str, cfg: PrepConfig, summary: PrepSummary,
                parallel: Parallel, progress: tqdm) -> None:
    """Write one shard from its clips; bad files are recorded in `summary` and left out."""
    _remove_stale_partials(path)
    first = clips.iloc[0]
    meta = {"dataset": first["dataset"], "machine": first["machine"], "split": first["split_folder"],
            "source_root": str(Path(cfg.raw_dir).resolve()), "source_digest": digest}
    paths = clips["path"].tolist()
    tasks = (delayed(process_clips)(paths[i:i + CLIPS_PER_TASK], cfg.features)
             for i in range(0, len(paths), CLIPS_PER_TASK))
    rows = clips.to_dict("records")
    with ShardWriter(path, cfg.features, meta) as writer:
        offset = 0
        for results in parallel(tasks):
            batch_rows, batch_segments = [], []
            for row, result in zip(rows[offset:offset + len(results)], results, strict=True):
                if isinstance(result, str):
                    summary.files_skipped.append(SkippedFile(row["rel_path"], result))
                    continue
                waves, mels, starts, n_samples, rate, channels, notes = result
                for note in notes:
                    kind = note.split(" ")[0] if " " in note else note
                    summary.notes[kind] = summary.notes.get(kind, 0) + 1
                batch_rows.append({k: row[k] for k in ("rel_path", "file_name", "machine", "section",
                                                       "domain", "split", "label", "attributes")}
                                  | {"n_samples": n_samples, "original_sample_rate": rate,
                                     "original_channels": channels, "notes": "; ".join(notes)})
                batch_segments.append((waves, mels, starts))
                summary.segments += len(waves)
            writer.add_clips(batch_rows, batch_segments)
            summary.clips += len(batch_rows)
            offset += len(results)
            progress.update(len(results))
        if writer.n_clips == 0:
            writer.abort()
            path.unlink(missing_ok=True)  # an older shard no longer matches the files
            summary.files_skipped.append(SkippedFile(str(path), "no usable clip: shard not written"))
            return
        writer.commit()
    summary.shards_written.append(str(path))


def run_prep(cfg: PrepConfig, show_progress: bool = True) -> PrepSummary:
    """Build (or reuse) every shard for the clips under `cfg.raw_dir`. See the module docstring."""
    start = time.perf_counter()
    manifest, skipped_names = scan_raw_root(Path(cfg.raw_dir), list(cfg.machines) or None)
    if manifest.empty:
        raise FileNotFoundError(
            f"no DCASE-style clips under {cfg.raw_dir!r} (expected <dataset>/<machine>/train/*.wav). "
            "Make a synthetic dataset with `python source/main.py synth`, or point --raw-dir at your data."
        )
    summary = PrepSummary(files_skipped=list(skipped_names))
    plan = list(_shard_plan(manifest, cfg))
    # Decide for every shard before writing anything, so a settings clash stops the run up front.
    todo = []
    for path, clips, digest in plan:
        action = "build" if cfg.force else check_cache(path, cfg.features, digest)
        if action == "skip":
            summary.shards_skipped.append(str(path))
        else:
            todo.append((path, clips, digest))
    n_todo = sum(len(clips) for _, clips, _ in todo)
    # Threads by default: decoding and the STFT release the GIL, and results need no pickling (a process
    # pool spent more time shipping ~0.5 MB per clip than computing it; see bench/README.md). `prefer` is
    # only a hint, so joblib.parallel_config(backend=...) around this call still chooses the backend.
    parallel = Parallel(n_jobs=cfg.jobs, prefer="threads", return_as="generator", pre_dispatch="2*n_jobs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallelism is across clips; one torch thread each avoids oversubscription
    try:
        with tqdm(total=n_todo, unit="clip", desc="data_prep", disable=not show_progress or n_todo == 0) as bar:
            for path, clips, digest in todo:
                bar.set_postfix_str(f"{path.parent.name}/{path.name}")
                build_shard(path, clips, digest, cfg, summary, parallel, bar)
    finally:
        torch.set_num_threads(threads)
    summary.seconds = time.perf_counter() - start
    _write_summary(cfg, summary)
    return summary


def _write_summary(cfg: PrepConfig, summary: PrepSummary) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(cfg), **asdict(summary)}
    tmp = out / ".data_prep_summary.json.partial"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, out / "data_prep_summary.json")

