"""data_prep: every clip under a raw root → 1-second segments (waveform + log-mel) in HDF5 shards.

Workers (threads by default) decode and compute features for chunks of clips; the main thread is the
only writer, and consumes results as they arrive, so memory stays flat however many clips there are. A shard is reused
only when it was built with the same settings from the same files; other settings are refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from asd.cache.audio import BadAudio, probe, read_clip
from asd.cache.features import SCHEMA_VERSION, FeatureConfig, segment_features, segment_starts
from asd.cache.heap import keep_freed_memory
from asd.cache.integrity import GARBLED, Damage, check_header, first_line, stamp_matches, write_stamp
from asd.cache.melspec import one_thread_each
from asd.cache.shard import StaleShard, read_shard_attrs, verify_shard
from asd.cache.store import old_layout_note, shard_path, summary_path
from asd.cache.writer import SegmentBatch, ShardWriter
from asd.dataset.layout import SkippedFile, find_machine_dirs, scan_raw_records
from asd.errors import MAIN_COMMAND, BadInput, ShardWriteFailed
from asd.folders import check_writable_dir

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
    shards_failed: list[SkippedFile] = field(default_factory=list)
    shards_damaged: list[SkippedFile] = field(default_factory=list)  # found damaged, hence rebuilt
    notes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # about the cache folder itself (an old layout)
    seconds: float = 0.0

    def add(self, part: PrepSummary) -> None:
        """Count in what another part of the run did (a shard built as a task of its own)."""
        self.clips += part.clips
        self.segments += part.segments
        self.shards_written += part.shards_written
        self.shards_skipped += part.shards_skipped
        self.files_skipped += part.files_skipped
        self.shards_failed += part.shards_failed
        self.shards_damaged += part.shards_damaged
        for kind, n in part.notes.items():
            self.notes[kind] = self.notes.get(kind, 0) + n

    def lines(self) -> list[str]:
        rate = self.clips / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"data_prep: {self.clips} clips -> {self.segments} segments; shards written "
            f"{len(self.shards_written)}, skipped (up to date) {len(self.shards_skipped)}; "
            f"{self.seconds:.1f} s ({rate:.1f} clips/s)"
        ]
        if not self.shards_written and self.shards_skipped:
            out.append("  every shard is up to date: nothing to do (use --force to rebuild)")
        for damaged in self.shards_damaged:
            done = "rebuilt" if damaged.path in self.shards_written else "not rebuilt (see FAILED below)"
            out.append(f"  damaged shard {damaged.path} ({damaged.reason}): {done}")
        out += [f"  note: {n} clips {what}" for what, n in sorted(self.notes.items())]
        out += [f"  warning: {text}" for text in self.warnings]
        if self.files_skipped:
            out.append(f"  files skipped: {len(self.files_skipped)}")
            out += [f"    {f.path}: {f.reason}" for f in self.files_skipped]
        if self.shards_failed:
            out.append(f"  FAILED: {len(self.shards_failed)} shard(s) not written (the others are complete)")
            out += [f"    {f.path}: {f.reason}" for f in self.shards_failed]
        return out


def source_digest(clips: list[dict]) -> str:
    """Hash of the shard's input files (relative path, size, modification time)."""
    digest = hashlib.sha256()
    for clip in clips:
        rel, st = clip["rel_path"], os.stat(clip["path"])
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class Throttle:
    """Backpressure between the workers and the single writer: task k starts only once the writer has
    consumed task k - window. joblib dispatches a new task whenever one completes, not when its result
    is consumed, so without this a writer a little slower than the workers lets finished results pile
    up in memory, growing with the number of clips. Task k - window is always consumable before task k
    runs (results are consumed in order), so this never deadlocks. In another process (a process
    backend) it unpickles as a no-op: there the results are shipped as they complete anyway."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.consumed = 0
        self._cond = threading.Condition()

    def wait_turn(self, task: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.consumed >= task - self.window)

    def consumed_one(self) -> None:
        with self._cond:
            self.consumed += 1
            self._cond.notify_all()

    def __reduce__(self):
        return (_no_throttle, ())


def _no_throttle() -> None:
    return None


def process_clips(paths: list[str], config: FeatureConfig, throttle: Throttle | None = None,
                  task: int = 0) -> tuple[list[tuple | str], SegmentBatch | None]:
    """Worker task: decode and featurise clips. Returns, per clip, either
    `(n_samples, original_rate, original_channels, notes)` or an error string, and the segments of the
    clips that worked as one `SegmentBatch` (None when none did): the concatenation and the row
    checksums run here, in parallel, not in the single writer."""
    if throttle is not None:
        throttle.wait_turn(task)
    outcomes, features = [], []
    for path in paths:
        try:
            clip = read_clip(path, config)
        except BadAudio as err:
            outcomes.append(str(err))
            continue
        feats = segment_features(clip.samples, config)
        notes = list(clip.notes)
        if feats.padded_to is not None:
            notes.append(f"padded {len(clip.samples)}->{feats.padded_to} samples")
        outcomes.append((len(clip.samples), clip.original_sample_rate, clip.original_channels, notes))
        features.append(feats)
    return outcomes, SegmentBatch.from_features(features) if features else None


def clip_plan(path: str, config: FeatureConfig) -> tuple[int, bool]:
    """From a clip's header alone: the segments it will give (sizes the shard; 0 when the header is bad)
    and whether it needs resampling (the one step that imports torch)."""
    try:
        head = probe(path)
    except BadAudio:
        return 0, False
    return len(segment_starts(head.output_samples(config), config)[0]), head.sample_rate != config.sample_rate


def plan_shards(manifest: list[dict], cfg: PrepConfig) -> Iterator[tuple[Path, list[dict], str]]:
    """Per shard, in order: its path, its clips (manifest records) and the digest of their files. The
    manifest is sorted by dataset, machine and split folder (`layout.scan_raw_records`)."""
    for (dataset, machine, split_folder), group in itertools.groupby(
            manifest, key=lambda clip: (clip["dataset"], clip["machine"], clip["split_folder"])):
        clips = list(group)
        yield shard_path(Path(cfg.out_dir), dataset, machine, split_folder), clips, source_digest(clips)


def check_cache(path: Path, features: FeatureConfig, digest: str) -> tuple[str, str]:
    """What to do with the shard at `path`: ("build", "") when there is none or its input files changed,
    ("skip", "") when it is up to date and whole, ("build", why) when it is damaged. Raises `StaleShard`
    when the existing shard was built by another version or with other feature settings, so caches never mix.

    Whole means: its header, shapes and tables match their digests (always checked, milliseconds), and its
    data rows match their checksums, read back in full unless its stamp shows the file is byte for byte
    the one last verified (`asd.cache.integrity`); a full check that passes renews the stamp."""
    try:
        attrs = read_shard_attrs(path)
    except GARBLED as err:
        return "build", f"unreadable header: {first_line(err)}"
    if attrs is None:
        return "build", ""
    if not attrs.get("complete"):
        return "build", "not marked complete"
    if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
        raise StaleShard(
            f"{path} was written by another version of data_prep (shard schema {attrs.get('schema_version')}, "
            f"this version writes {SCHEMA_VERSION}: log-mels cut from the whole clip, every row checksummed). "
            "Rebuild it with --force, or write the new cache elsewhere with --out-dir."
        )
    try:
        check_header(attrs)  # before the fingerprint: a damaged attribute is not "other settings"
    except Damage as err:
        return "build", str(err)
    if attrs.get("fingerprint") != features.fingerprint():
        theirs = json.loads(attrs.get("feature_config", "{}"))
        diff = ", ".join(f"{k}: {a} -> {b}" for k, a, b in
                         ((k, *v) for k, v in features.differences(theirs).items()))
        raise StaleShard(
            f"{path} was built with other settings ({diff or 'schema version'}). Rebuild it with --force, "
            "or write the new cache elsewhere with --out-dir."
        )
    if attrs.get("source_digest") != digest:
        return "build", ""
    full = not stamp_matches(path)
    try:
        verify_shard(path, full=full)
    except Damage as err:
        return "build", str(err)
    if full:
        write_stamp(path)
    return "skip", ""


def remove_stale_partials(folder: Path, pattern: str = ".*.partial") -> list[Path]:
    """Temporary files left in `folder` by killed runs (their writer process is gone): deleted.
    Temporary names end in `.<pid>.partial`; a live pid's file belongs to a run still going."""
    removed = []
    for partial in Path(folder).glob(pattern):
        pid_text = partial.name.rsplit(".", 2)[-2]
        try:
            os.kill(int(pid_text), 0)  # no error: the writer still runs (PermissionError: another user's)
        except (ProcessLookupError, ValueError):
            partial.unlink(missing_ok=True)
            removed.append(partial)
        except PermissionError:
            pass
    return removed


CLIP_FIELDS = ("rel_path", "file_name", "machine", "section", "domain", "split", "label", "attributes")


class _ShardJob:
    """One shard being written from the results of its tasks."""

    def __init__(self, path: Path, clips: list[dict], digest: str, cfg: PrepConfig) -> None:
        self.path, self.clips, self.digest = path, clips, digest
        self.offset = 0
        plans = [clip_plan(clip["path"], cfg.features) for clip in clips]
        self.expected = sum(n for n, _ in plans)
        self.resamples = any(r for _, r in plans)
        first = clips[0]
        self.meta = {"dataset": first["dataset"], "machine": first["machine"], "split": first["split_folder"],
                     "source_root": str(Path(cfg.raw_dir).resolve()), "source_digest": digest}
        self.writer: ShardWriter | None = None
        self.failed: str | None = None

    def add(self, outcomes: list, batch: SegmentBatch | None, cfg: PrepConfig, summary: PrepSummary) -> None:
        rows = self.clips[self.offset:self.offset + len(outcomes)]
        self.offset += len(outcomes)
        if self.failed:
            return
        batch_rows = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, str):
                summary.files_skipped.append(SkippedFile(row["rel_path"], outcome))
                continue
            n_samples, rate, channels, notes = outcome
            for note in notes:
                kind = note.split(" ")[0] if " " in note else note
                summary.notes[kind] = summary.notes.get(kind, 0) + 1
            batch_rows.append({k: row[k] for k in CLIP_FIELDS}
                              | {"n_samples": n_samples, "original_sample_rate": rate,
                                 "original_channels": channels, "notes": "; ".join(notes)})
        if not batch_rows:
            return
        try:
            if self.writer is None:
                self.writer = ShardWriter(self.path, cfg.features, self.meta, expected_segments=self.expected,
                                          expected_clips=len(self.clips))
            self.writer.add_clips(batch_rows, batch)
        except ShardWriteFailed as err:
            self.fail(err.reason)

    def fail(self, reason: str) -> None:
        self.failed = reason
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def finish(self, summary: PrepSummary) -> None:
        """Commit (verified), or record why not."""
        if self.failed is None and self.writer is None:
            self.path.unlink(missing_ok=True)  # an older shard no longer matches the files
            summary.files_skipped.append(SkippedFile(str(self.path), "no usable clip: shard not written"))
            return
        if self.failed is None:
            try:
                self.writer.commit()
            except ShardWriteFailed as err:
                self.fail(err.reason)
        if self.failed is not None:
            summary.shards_failed.append(SkippedFile(str(self.path), self.failed))
            return
        summary.clips += self.writer.n_clips
        summary.segments += self.writer.n_segments
        summary.shards_written.append(str(self.path))
        self.writer = None  # its staging buffers (~16 MB) go now, not at the end of the run


def _write_shards(jobs: list[_ShardJob], cfg: PrepConfig, summary: PrepSummary, parallel: Parallel,
                  progress: tqdm) -> None:
    """One stream of tasks over every shard, so the workers never wait at a shard boundary; the calling
    thread is the only writer, and commits (with its read-back check) while the workers go on."""
    tasks = [(k, [clip["path"] for clip in job.clips[i:i + CLIPS_PER_TASK]])
             for k, job in enumerate(jobs) for i in range(0, len(job.clips), CLIPS_PER_TASK)]
    owners = [k for k, _ in tasks]
    throttle = Throttle(window=4 * max(1, abs(cfg.jobs) if cfg.jobs > 0 else (os.cpu_count() or 1)))
    current = 0
    try:
        for owner, (outcomes, batch) in zip(owners, parallel(
                delayed(process_clips)(paths, cfg.features, throttle, i) for i, (_, paths) in enumerate(tasks)),
                strict=True):
            while current < owner:
                jobs[current].finish(summary)
                current += 1
            jobs[owner].add(outcomes, batch, cfg, summary)
            throttle.consumed_one()
            progress.update(len(outcomes))
        while current < len(jobs):
            jobs[current].finish(summary)
            current += 1
    finally:
        for job in jobs[current:]:  # interrupted (an exception or Ctrl-C): nothing half-written stays
            job.fail("interrupted")


def build_shard(path: Path, clips: list[dict], digest: str, cfg: PrepConfig, summary: PrepSummary,
                parallel: Parallel, progress: tqdm) -> None:
    """Write one shard from its clips (the unit of work of a distributed run): leftovers of killed runs
    removed, bad files recorded in `summary`, a failed write recorded in `summary.shards_failed`."""
    remove_stale_partials(path.parent, f".{path.name}.*.partial")
    keep_freed_memory()
    _write_shards([_ShardJob(path, clips, digest, cfg)], cfg, summary, parallel, progress)


def plan_prep(cfg: PrepConfig) -> tuple[list[tuple[Path, list[dict], str]], PrepSummary]:
    """Everything checked before any shard is written, the same for every way of running: the raw folder,
    `--machines`, the clips found, the output folder, and per shard whether it is up to date (a shard built
    with other settings stops the run here, so caches never mix). Returns the shards to build (path, clips,
    digest) and the summary so far (files skipped while scanning, shards up to date)."""
    if not Path(cfg.raw_dir).is_dir():
        raise BadInput(f"--raw-dir {cfg.raw_dir} is not a folder")
    if cfg.machines:
        found = sorted({d.name for d in find_machine_dirs(Path(cfg.raw_dir).resolve())})
        unknown = [m for m in cfg.machines if m not in found]
        if unknown:
            raise BadInput(f"--machines: no machine type named {', '.join(map(repr, unknown))} under "
                           f"{cfg.raw_dir} (found: {', '.join(found) or 'none'})")
    manifest, skipped_names = scan_raw_records(Path(cfg.raw_dir), list(cfg.machines) or None)
    if not manifest:
        raise BadInput(
            f"no DCASE-style clips under {cfg.raw_dir!r} (expected <dataset>/<machine>/train/*.wav). "
            f"Make a synthetic dataset with `{MAIN_COMMAND} synth`, or point --raw-dir at your data."
        )
    check_writable_dir(cfg.out_dir, "--out-dir")
    summary = PrepSummary(files_skipped=list(skipped_names),
                          warnings=[note for note in [old_layout_note(cfg.out_dir)] if note])
    todo = []
    for path, clips, digest in plan_shards(manifest, cfg):
        remove_stale_partials(path.parent, f".{path.name}.*.partial")  # killed runs, --force or not
        action, damage = ("build", "") if cfg.force else check_cache(path, cfg.features, digest)
        if damage:
            summary.shards_damaged.append(SkippedFile(str(path), damage))
        if action == "skip":
            summary.shards_skipped.append(str(path))
        else:
            todo.append((path, clips, digest))
    return todo, summary


def run_prep(cfg: PrepConfig, show_progress: bool = True, executor=None) -> PrepSummary:
    """Build (or reuse) every shard for the clips under `cfg.raw_dir`. See the module docstring.

    `executor` (e.g. `asd.engine.distributed.DaskExecutor`) builds each shard as a task of its own with
    `build_shard_task`; without one, this process builds them with a pool of worker threads.
    """
    start = time.perf_counter()
    todo, summary = plan_prep(cfg)
    if executor is None:
        _build_here(todo, cfg, summary, show_progress)
    elif todo:
        jobs = [(path, clips, digest, cfg) for path, clips, digest in todo]
        for _, part in executor.map(build_shard_task, jobs, label="shard"):
            summary.add(part)
        summary.shards_written.sort()
    summary.seconds = time.perf_counter() - start
    _write_summary(cfg, summary)
    return summary


def _build_here(todo: list[tuple[Path, list[dict], str]], cfg: PrepConfig, summary: PrepSummary,
                show_progress: bool) -> None:
    """Every shard of `todo` from one stream of tasks on worker threads; this thread is the only writer."""
    n_todo = sum(len(clips) for _, clips, _ in todo)
    keep_freed_memory()  # no page faults for every clip's temporaries (asd.cache.heap)
    # Threads by default: decoding and the STFT release the GIL, and results need no pickling (a process
    # pool spent more time shipping ~0.5 MB per clip than computing it; see bench/README.md). `prefer` is
    # only a hint, so joblib.parallel_config(backend=...) around this call still chooses the backend.
    parallel = Parallel(n_jobs=cfg.jobs, prefer="threads", return_as="generator", pre_dispatch="2*n_jobs")
    jobs = [_ShardJob(path, clips, digest, cfg) for path, clips, digest in todo]
    # the parallelism is across clips: one BLAS (and torch, only if resampling) thread each
    with one_thread_each(torch_too=any(job.resamples for job in jobs)), tqdm(
            total=n_todo, unit="clip", desc="data_prep", disable=not show_progress or n_todo == 0) as bar:
        _write_shards(jobs, cfg, summary, parallel, bar)


def build_shard_task(path: Path, clips: list[dict], digest: str, cfg: PrepConfig) -> PrepSummary:
    """One shard as a task of its own (on a Dask worker): decoded in this worker's own thread; what it did
    comes back as a summary. Skipped when another run built it in the meantime."""
    summary = PrepSummary()
    start = time.perf_counter()
    action, damage = ("build", "") if cfg.force else check_cache(path, cfg.features, digest)
    if damage:
        summary.shards_damaged.append(SkippedFile(str(path), damage))
    if action == "skip":
        summary.shards_skipped.append(str(path))
        return summary
    with tqdm(disable=True) as bar:
        build_shard(path, clips, digest, cfg, summary, Parallel(n_jobs=1, return_as="generator"), bar)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_summary(cfg: PrepConfig, summary: PrepSummary) -> None:
    """data_prep_summary.json, through a temporary name of this process's own (concurrent runs)."""
    final = summary_path(cfg.out_dir)
    remove_stale_partials(final.parent, f".{final.name}.*.partial")
    record = {"config": asdict(cfg), **asdict(summary)}
    tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        summary.shards_failed.append(SkippedFile(str(final), f"not written: {err}"))
