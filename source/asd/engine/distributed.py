"""Past one machine: data_prep shards and per-machine training/testing as Dask tasks.

`--scheduler local[:N]` starts a `LocalCluster` of N worker processes (one thread each) on this machine;
any other value is the address of a running `dask.distributed` scheduler (e.g. one started by
dask-jobqueue on SLURM). Workers read and write the same folders as the client, so those must be on
storage every worker sees. The client only plans, submits and collects small summaries:

* data_prep: one task per shard; the worker builds it with the same `build_shard` (same atomic write,
  same verification); the settings check (fingerprint refusal) runs on the client for every shard before
  anything is submitted, exactly as in a single-machine run, and again on the worker.
* training: one task per machine type (x seed); the worker trains, saves the model and its thresholds,
  scores the test shards and writes that machine's official files. The client writes thresholds.csv,
  predictions.csv and the summaries, as a single-machine run does. A failed task is reported and the
  others' results are kept; a rerun skips machine types whose model and thresholds are already saved.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from asd.cache.build import PrepConfig, PrepSummary, _shard_plan, _write_summary, build_shard, check_cache

TASK_RECORD = "task.json"  # written beside model.pt once a machine's training and thresholds are saved
_LOCAL = re.compile(r"^local(?::(?P<n>\d+))?$")


class TaskFailures(RuntimeError):
    """Some Dask tasks failed; the others' results are written. The message lists each failure."""


def check_scheduler(spec: str) -> str:
    """`local`, `local:N` (N >= 1) or a scheduler address (tcp://host:port, tls://..., host:port)."""
    match = _LOCAL.match(spec)
    if match and (match["n"] is None or int(match["n"]) >= 1):
        return spec
    if not match and re.match(r"^([a-z]+://)?[\w.\-\[\]:]+:\d+$", spec):
        return spec
    raise ValueError(f"--scheduler {spec!r}: expected local, local:N or a scheduler address like "
                     "tcp://10.0.0.5:8786")


@contextmanager
def connect(spec: str):
    """A dask.distributed Client for `spec` (see `check_scheduler`); a local cluster is closed afterwards."""
    from dask.distributed import Client, LocalCluster

    match = _LOCAL.match(check_scheduler(spec))
    if match:
        n = int(match["n"] or max(1, (os.cpu_count() or 2) // 2))
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
    else:
        with Client(spec, timeout="30s") as client:
            yield client


# ----------------------------------------------------------------- data_prep -----------------------------------

def build_shard_task(path: Path, clips: list[dict], digest: str, cfg: PrepConfig) -> PrepSummary:
    """Worker side: build one shard (decoding in this worker's own thread) and return what it did."""
    from joblib import Parallel
    from tqdm.auto import tqdm

    summary = PrepSummary()
    start = time.perf_counter()
    if not cfg.force and check_cache(path, cfg.features, digest) == "skip":  # another run got there first
        summary.shards_skipped.append(str(path))
        return summary
    parallel = Parallel(n_jobs=1, return_as="generator")
    with tqdm(disable=True) as bar:
        build_shard(path, clips, digest, cfg, summary, parallel, bar)
    summary.seconds = time.perf_counter() - start
    return summary


def run_prep_distributed(cfg: PrepConfig, scheduler: str, log: Callable[[str], None] = print) -> PrepSummary:
    """`run_prep` with one Dask task per shard; the same shards, the same summary file."""
    from asd.dataset.layout import scan_raw_records

    start = time.perf_counter()
    manifest, skipped_names = scan_raw_records(Path(cfg.raw_dir), list(cfg.machines) or None)
    if not manifest:
        raise FileNotFoundError(f"no DCASE-style clips under {cfg.raw_dir!r} (expected "
                                "<dataset>/<machine>/train/*.wav)")
    summary = PrepSummary(files_skipped=list(skipped_names))
    todo = []
    for path, clips, digest in _shard_plan(manifest, cfg):  # settings clash -> StaleShard before any work
        if not cfg.force and check_cache(path, cfg.features, digest) == "skip":
            summary.shards_skipped.append(str(path))
        else:
            todo.append((path, clips, digest))
    failures = []
    if todo:
        with connect(scheduler) as client:
            log(f"data_prep: {len(todo)} shard(s) on {len(client.scheduler_info()['workers'])} worker(s)")
            futures = {client.submit(build_shard_task, p, c, d, cfg, key=f"shard-{p}", pure=False): p
                       for p, c, d in todo}
            from dask.distributed import as_completed

            for future in as_completed(futures):
                path = futures[future]
                if future.status == "error":
                    failures.append(f"{path}: {future.exception()!r}")
                    continue
                part = future.result()
                summary.clips += part.clips
                summary.segments += part.segments
                summary.shards_written += part.shards_written
                summary.shards_skipped += part.shards_skipped
                summary.files_skipped += part.files_skipped
                summary.shards_failed += part.shards_failed
                for kind, n in part.notes.items():
                    summary.notes[kind] = summary.notes.get(kind, 0) + n
    summary.shards_written.sort()
    summary.seconds = time.perf_counter() - start
    _write_summary(cfg, summary)
    if failures:
        raise TaskFailures(f"{len(failures)} shard(s) failed (the others are written; rerun to retry):\n  "
                           + "\n  ".join(failures))
    return summary


# -------------------------------------------------------------- train and test -----------------------------------

@dataclass(frozen=True)
class MachineTask:
    """One unit of work on a worker: a machine type of a dataset, trained with one seed into one run folder."""

    item: object  # asd.engine.train.MachineData
    run_dir: Path
    model: str
    train: object  # asd.models.base.TrainConfig


def machine_task(task: MachineTask) -> dict:
    """Worker side: train (unless already saved), then test one machine type; returns rows and predictions."""
    from asd.engine.train import machine_dir, test_machine, train_machine, write_machine_outputs

    out = machine_dir(task.run_dir, task.item)
    record = out / TASK_RECORD
    start = time.perf_counter()
    if record.exists() and (out / "model.pt").exists():
        rows = json.loads(record.read_text())["thresholds"]
        trained = False
    else:
        rows = train_machine(task.item, task.run_dir, task.model, task.train)
        tmp = out / (TASK_RECORD + ".partial")
        tmp.write_text(json.dumps({"thresholds": rows}, default=str))
        os.replace(tmp, record)
        trained = True
    result = {"rows": rows, "trained": trained, "predictions": None, "rules": None,
              "seconds": time.perf_counter() - start, "host": os.uname().nodename}
    if task.item.tests:
        predictions, rules = test_machine(task.item, task.run_dir, task.train)
        write_machine_outputs(task.item, task.run_dir, predictions, rules)
        result.update(predictions=predictions.assign(rules=rules), rules=rules)
    result["seconds"] = time.perf_counter() - start
    return result


def run_distributed(processed_dir: Path, run_dir: Path, model: str, train, machines: list[str] | None,
                    seeds: list[int] | None, scheduler: str, log: Callable[[str], None] = print) -> list[str]:
    """Train and test every machine type (x seed) as Dask tasks; returns the failures (empty = all done).

    One seed: results go to `run_dir` exactly as a single-machine run writes them. Several seeds: one
    complete run folder per seed, `run_dir/seed_<s>/`.
    """
    from dask.distributed import as_completed

    from asd.engine.train import discover, train_config_record, write_config
    from asd.reports.summary import report_run

    items = discover(processed_dir, machines)
    if not items:
        raise FileNotFoundError(f"no shards under {processed_dir}; run `python source/data_prep.py` first")
    seed_dirs = {s: (run_dir / f"seed_{s}" if seeds else run_dir) for s in (seeds or [train.seed])}
    tasks = []
    for seed, folder in seed_dirs.items():
        config = replace(train, seed=seed)
        write_config(folder, train_config_record(config, model, processed_dir))
        tasks += [MachineTask(item, folder, model, config) for item in items]
    failures: list[str] = []
    results: dict[Path, list[dict]] = {folder: [] for folder in seed_dirs.values()}
    with connect(scheduler) as client:
        n_workers = len(client.scheduler_info()["workers"])
        log(f"training {model} on {len(items)} machine type(s) x {len(seed_dirs)} seed(s) as {len(tasks)} "
            f"task(s) on {n_workers} worker(s) -> {run_dir}")
        futures = {client.submit(machine_task, t, key=f"train-{t.run_dir}-{t.item.key}", pure=False): t
                   for t in tasks}
        for future in as_completed(futures):
            task = futures[future]
            name = f"{task.item.key} (seed {task.train.seed})"
            if future.status == "error":
                failures.append(f"{name}: {future.exception()!r}")
                log(f"  FAILED {name}: {future.exception()!r}")
                continue
            result = future.result()
            results[task.run_dir].append(result)
            pooled = result["rows"][-1]
            log(f"  {name:<48} {result['seconds']:6.1f} s on {result['host']}"
                f"{'' if result['trained'] else ' (model already saved)'}   threshold {pooled['threshold']:.4g}")
    for folder, done in results.items():  # whatever finished is written, even when other tasks failed
        if not done:
            continue
        rows = sorted((r for d in done for r in d["rows"]), key=lambda r: (r["dataset"], r["machine"]))
        pd.DataFrame(rows).to_csv(folder / "thresholds.csv", index=False)
        frames = [d["predictions"] for d in sorted(done, key=lambda d: (d["rows"][0]["dataset"],
                                                                          d["rows"][0]["machine"]))
                  if d["predictions"] is not None]
        if frames:
            log(report_run(folder, pd.concat(frames, ignore_index=True)))
    return failures
