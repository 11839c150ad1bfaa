"""The train and test stages: one orchestrator, whatever executes the work.

A stage is a list of `MachineTask`s (one per machine type, per seed), each run by `run_machine` in this
process or as a Dask task (`asd.engine.distributed.DaskExecutor`): the same steps, the same files, the
same scores. Around the tasks, this module checks everything before the first one starts (shards found,
device, run folder writable, the model's settings), trains what a model learns per dataset first, and
writes the run's tables, summary and page from what the tasks return.

A machine type that fails with an AsdError is reported and skipped; the others go on, and the outcome
lists what failed. A machine type whose model and task record were saved by an earlier run of the same
configuration is not trained again (a rerun finishes only what is missing).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import pandas as pd

from asd.cache.shard import check_shard
from asd.cache.store import MachineData, discover, old_layout_note
from asd.engine.config import RunConfig, recorded_config
from asd.errors import PREP_COMMAND, AsdError, BadInput, BadState
from asd.folders import check_writable_dir, write_atomically
from asd.reports.backend import check_plotting
from asd.run_folder import RunFolder


class InProcess:
    """Runs tasks one after the other in this process (the executor of a run without `--scheduler`)."""

    remote = False

    def map(self, function: Callable, argument_lists: Iterable[tuple], label: str = "task"
            ) -> Iterator[tuple[tuple, Any]]:
        for arguments in argument_lists:
            yield arguments, function(*arguments)


@dataclass
class StageOutcome:
    """What a stage did in one run folder: the machine types done, and those that failed with the reason."""

    folder: RunFolder
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    reported: bool = False  # summary.txt written by this command
    rerun_hint: str = ""  # how to finish what failed, once it is mended

    def fail(self, key: str, stage: str, err: Exception | str, label: str = "") -> None:
        self.failed[key] = f"{stage}: {err}"
        click.echo(f"error: {key}{label}: {stage} failed: {err}", err=True)


@dataclass(frozen=True)
class MachineTask:
    """One unit of work: a machine type trained and/or tested with one configuration into one run folder."""

    machine: MachineData
    config: RunConfig
    folder: RunFolder
    train: bool
    test: bool
    shared: object | None = None  # what the model learned from the machine type's whole dataset


@dataclass
class MachineResult:
    """What a task did: threshold rows (trained or read back), predictions (tested), or why it failed."""

    rows: list[dict] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    resumed: bool = False  # model and thresholds were saved by an earlier run of the same configuration
    failed: tuple[str, str] | None = None  # (stage, reason)
    seconds: float = 0.0
    host: str = ""


def run_machine(task: MachineTask) -> MachineResult:
    """Train (unless already saved with this configuration) and/or test one machine type. Runs wherever the
    executor puts it; an AsdError becomes the result's `failed`, anything else is a bug and propagates."""
    from asd.engine.test import score_machine, write_machine_outputs
    from asd.engine.train import train_machine
    from asd.models.device import set_threads

    machine, folder, config = task.machine, task.folder, task.config
    set_threads(config.fit.threads)  # scoring too: the same threads wherever the task runs
    result = MachineResult(host=os.uname().nodename)
    start = time.perf_counter()
    stage = "train"
    try:
        if task.train:
            record = folder.read_task(machine.dataset, machine.machine)
            if record is not None and record.get("config") == config.to_dict():
                result.rows, result.resumed = record["thresholds"], True
            else:
                if machine.train is None:
                    raise BadState(f"no train.h5 shard (no training clips); put normal clips in "
                                   f"{machine.machine}/train/ and rerun `{PREP_COMMAND}`")
                check_shard(machine.train)
                folder.remove_partial_files(machine.dataset, machine.machine)  # left by a run killed while saving
                result.rows = train_machine(machine, config, folder, task.shared)
                folder.write_task(machine.dataset, machine.machine,
                                  {"config": config.to_dict(), "thresholds": result.rows})
        stage = "test"
        if task.test and machine.tests:
            for path in machine.tests:
                check_shard(path)
            predictions, rules = score_machine(machine, config, folder)
            write_machine_outputs(machine, folder, predictions, rules)
            result.predictions = predictions.assign(rules=rules)
    except AsdError as err:
        result.failed = (stage, str(err))
    result.seconds = time.perf_counter() - start
    return result


def discover_checked(config: RunConfig) -> list[MachineData]:
    """The machine types a run works on; BadInput / BadState before any work when there are none."""
    machines = discover(config.processed_dir, list(config.machines) or None)
    note = old_layout_note(config.processed_dir)
    if config.machines:
        missing = sorted(set(config.machines) - {m.machine for m in machines})
        if missing:
            found = sorted({m.machine for m in discover(config.processed_dir)})
            raise BadInput(f"--machines: no shards for {', '.join(missing)} under {config.processed_dir} "
                           f"(found: {', '.join(found) or 'none'})")
    if not machines:
        raise BadState(note or f"no shards under {config.processed_dir}; run `{PREP_COMMAND}` first")
    if note:
        click.echo(f"warning: {note}", err=True)
    if config.aux_processed_dirs:
        from asd.engine.train import auxiliary_machines

        auxiliary_machines(config)  # every --aux-processed-dir holds training shards
        if not config.make_detector().learns_per_dataset():
            click.echo(f"warning: --aux-processed-dir is used by the learned models with scope=dataset "
                       f"(embed, twobranch); {config.model} ignores it", err=True)
        elif not _learns_anything_per_dataset(machines, config):
            click.echo(f"warning: --aux-processed-dir is ignored: no machine type here has the training clips "
                       f"that {config.model}'s learned members need", err=True)
    return machines


def _learns_anything_per_dataset(machines: list[MachineData], config: RunConfig) -> bool:
    """Whether some dataset of `machines` gets a shared fit (a damaged shard answers yes: it is reported
    when its own turn comes, not here)."""
    from asd.engine.train import shared_groups

    try:
        return bool(shared_groups(machines, config))
    except AsdError:
        return True


@dataclass
class _Plan:
    """One run folder of a command: its configuration (a seed each with --seeds) and what it did."""

    config: RunConfig
    outcome: StageOutcome
    label: str = ""  # " (seed N)" with several seeds
    results: dict[str, MachineResult] = field(default_factory=dict)

    @property
    def folder(self) -> RunFolder:
        return self.outcome.folder


def train_stage(config: RunConfig, folder: RunFolder, executor, *, test: bool,
                seeds: tuple[int, ...] = (), on_folder: Callable[[RunConfig, RunFolder], None] | None = None
                ) -> list[StageOutcome]:
    """Train every machine type found, then (`test`) test it: the `run` and `train` commands. With several
    `seeds`, one complete run folder per seed (`<run>/seed_<s>/`). `on_folder` is called with each run
    folder once it is checked (the command line writes its config.yaml there)."""
    from asd.models.device import resolve_device

    machines = discover_checked(config)
    device = resolve_device(config.fit.device)  # BadInput before any work when no GPU is there
    check_plotting()  # a bad MPLBACKEND stops the run now, not after the training
    folder = RunFolder(check_writable_dir(folder.path, "--output-dir"))
    with folder.lock():  # one writer per run folder: a second run into it stops here, naming this one
        return _train_locked(config, folder, executor, machines, device, test, seeds, on_folder)


def _train_locked(config: RunConfig, folder: RunFolder, executor, machines: list[MachineData], device: object,
                  test: bool, seeds: tuple[int, ...], on_folder: Callable[[RunConfig, RunFolder], None] | None
                  ) -> list[StageOutcome]:
    """`train_stage` once its checks are done and the run folder is held."""
    detector = config.make_detector()
    plans = []
    for seed in seeds or (config.fit.seed,):
        plan_config = config.with_seed(seed)
        plan_folder = folder.seed_folder(seed) if seeds else folder
        plan_folder.update_config({"run": plan_config.to_dict(), "applies": list(detector.applicable_fit_settings()),
                                   "used": {"epochs": config.fit.epochs or getattr(detector.config, "epochs", None),
                                            "device": str(device)},
                                   "trained": [], "failed": {}})
        if on_folder is not None:
            on_folder(plan_config, plan_folder)
        hint = (f"the same command with --output-dir {folder} trains only what is missing (models already saved "
                "with the same settings are kept)")
        plans.append(_Plan(plan_config, StageOutcome(plan_folder, rerun_hint=hint), f" (seed {seed})" if seeds else ""))
    click.echo(f"training {config.model} on {len(machines)} machine type(s)"
               + (f" x {len(plans)} seeds" if seeds else "") + f" -> {folder}")
    shared = _fit_shared(plans, machines, executor)
    tasks = [MachineTask(machine, plan.config, plan.folder, train=True, test=test,
                         shared=shared.get((plan.folder.path, machine.dataset)))
             for plan in plans for machine in machines]
    _run_tasks(plans, tasks, executor)
    for plan in plans:
        rows = [row for key in sorted(plan.results) for row in plan.results[key].rows]
        if rows:
            plan.folder.write_thresholds(rows)
        plan.folder.update_config({"trained": plan.outcome.done, "failed": plan.outcome.failed})
        if test:
            _report(plan, machines)
            _record_failures(plan.outcome)
    if len(plans) > 1:
        _report_seeds(folder, plans)
    return [plan.outcome for plan in plans]


def test_stage(folder: RunFolder, machines: tuple[str, ...] = (), device: str | None = None,
               executor=None) -> StageOutcome:
    """Score the test shards of every trained machine type of a run; write official files, metrics and
    plots: the `test` command."""
    from asd.models.device import resolve_device

    folder = RunFolder.existing(folder.path)
    config = recorded_config(folder)
    config = config.with_device(device) if device else config
    resolve_device(config.fit.device)
    check_plotting()
    check_writable_dir(folder.path, "--run")
    wanted = list(machines or config.machines) or None
    found = [m for m in discover(config.processed_dir, wanted) if m.tests]
    if not found:
        raise BadState(f"nothing to test in {folder}: no machine type of it has test shards under "
                       f"{config.processed_dir}")
    with folder.lock():
        return _test_locked(folder, config, found, executor)


def _test_locked(folder: RunFolder, config: RunConfig, found: list[MachineData], executor) -> StageOutcome:
    """`test_stage` once its checks are done and the run folder is held."""
    plan = _Plan(config, StageOutcome(folder))
    trained_failed = folder.read_config().get("failed", {})
    tasks = []
    for machine in found:
        if folder.model_path(machine.dataset, machine.machine).is_file():
            tasks.append(MachineTask(machine, config, folder, train=False, test=True))
        else:
            why = trained_failed.get(machine.key, "not trained in this run")
            plan.outcome.fail(machine.key, "test", f"no model.pt ({why})")
    click.echo(f"testing {len(tasks)} machine type(s) from {folder}")
    _run_tasks([plan], tasks, executor or InProcess())
    _report(plan, found)
    _record_failures(plan.outcome)
    return plan.outcome


def _fit_shared(plans: list[_Plan], machines: list[MachineData], executor) -> dict[tuple, object]:
    """What the model learns from a whole dataset (one task per run folder and dataset), keyed by
    (run folder, dataset); only for datasets with a machine type still to train. A dataset whose shards do
    not pass their checks is left out here (each is reported when its own turn comes)."""
    from asd.engine.train import fit_shared, shared_groups

    usable = []
    for machine in machines:
        try:
            if machine.train is not None:
                check_shard(machine.train)
                usable.append(machine)
        except AsdError:
            continue
    jobs = []
    for plan in plans:
        for dataset, group in shared_groups(usable, plan.config).items():
            if any(_needs_training(plan, machine) for machine in group):
                jobs.append((dataset, group, plan.config, plan.folder))
    shared, start = {}, time.perf_counter()
    for (dataset, _, _, plan_folder), networks in executor.map(fit_shared, jobs, label="shared network"):
        shared[(plan_folder.path, dataset)] = networks
        click.echo(f"  {dataset}: one network for its machine types in {time.perf_counter() - start:.1f} s "
                   f"(log: {plan_folder.shared_train_log(dataset)})")
    return shared


def _needs_training(plan: _Plan, machine: MachineData) -> bool:
    record = plan.folder.read_task(machine.dataset, machine.machine)
    return record is None or record.get("config") != plan.config.to_dict()


def threshold_line(row: dict) -> str:
    """One threshold row as `main` prints it: the out-of-fold scores of the normal clips it applies to, the
    threshold and where it was fitted, and the false-alarm rate to expect, with its 95 % interval."""
    key = "all sections" if row["section"] == "*" else (
        f"section {row['section']}" + ("" if row["domain"] == "*" else f" {row['domain']}"))
    expected = row.get("expected_false_alarm_rate", float("nan"))
    text = (f"{key:<22} {row['n_normal_clips']:>5} normal clips, out-of-fold scores median "
            f"{row.get('oof_median', float('nan')):.3g}, 90th pct {row.get('oof_p90', float('nan')):.3g}; "
            f"threshold {row['threshold']:.4g}; expected false alarms {expected:.1%} "
            f"[{row.get('false_alarm_low', float('nan')):.0%}, {row.get('false_alarm_high', float('nan')):.0%}]")
    if row.get("n_held_out"):
        text += f"; on {row['n_held_out']} held-out clips {row['held_out_false_alarm_rate']:.1%}"
    return text


def _run_tasks(plans: list[_Plan], tasks: list[MachineTask], executor) -> None:
    """Run the tasks; record each result in its plan and print one line per machine type as it ends."""
    by_folder = {plan.folder.path: plan for plan in plans}
    for (task,), result in executor.map(run_machine, [(task,) for task in tasks], label="machine type"):
        plan = by_folder[task.folder.path]
        key = task.machine.key
        plan.results[key] = result
        if result.failed is not None:
            plan.outcome.fail(key, *result.failed, label=plan.label)
            continue
        plan.outcome.done.append(key)
        where = f" on {result.host}" if getattr(executor, "remote", False) else ""
        resumed = " (model already saved)" if result.resumed else ""
        click.echo(f"  {key + plan.label:<40} {result.seconds:6.1f} s{where}{resumed}")
        rows = result.rows or []
        one_section = len({r["section"] for r in rows} - {"*"}) == 1
        for row in rows:
            if not (one_section and row["section"] == "*"):  # the pooled row repeats the only section's
                click.echo("    " + threshold_line(row))
    for plan in plans:
        plan.outcome.done.sort()


def _report(plan: _Plan, machines: list[MachineData]) -> None:
    """predictions.csv, per dataset summary.csv and official_score.csv, summary.txt and report.html, from
    the predictions the tasks returned."""
    from asd.evaluation.submission import write_summary
    from asd.reports.run_page import write_run_report
    from asd.reports.summary import run_summary

    frames = [plan.results[m.key].predictions for m in machines
              if m.key in plan.results and plan.results[m.key].predictions is not None]
    if not frames:
        if not any(m.tests for m in machines):
            raise BadState(f"nothing to test in {plan.folder}: no machine type of it has test shards under "
                           f"{plan.config.processed_dir}")
        return
    predictions = pd.concat(frames, ignore_index=True)
    folder = plan.folder
    folder.write_predictions(predictions)
    scores = {(dataset, rules): write_summary(part, folder.summary_csv(dataset), folder.official_score_csv(dataset),
                                              rules)
              for (dataset, rules), part in predictions.groupby(["dataset", "rules"], sort=True)}
    text = run_summary(folder, predictions, scores)
    folder.write_summary_text(text)
    click.echo(text)
    plan.outcome.reported = True
    click.echo(f"report: {write_run_report(folder)}  (open it in a browser)")


def _report_seeds(folder: RunFolder, plans: list[_Plan]) -> None:
    """seeds.csv (the official score of every seed's run) and the mean ± sd over the seeds."""
    from asd.reports.summary import run_scores

    rows = []
    for plan in plans:
        scores = run_scores(plan.folder.path)
        for row in scores[scores["metric"] == "official score"].itertuples(index=False):
            rows.append({"seed": plan.config.fit.seed, "dataset": row.dataset, "official score": row.value,
                         "run": plan.folder.path.name})
    if not rows:
        return
    table = pd.DataFrame(rows)
    write_atomically(folder.seeds_csv, table.to_csv(index=False))
    for dataset, part in table.groupby("dataset", sort=True):
        values = part["official score"].tolist()
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        click.echo(f"official score of {dataset} over seeds {', '.join(map(str, part['seed']))}: "
                   f"{statistics.fmean(values):.4f} ± {spread:.4f} (mean ± sd; each seed's run in its seed_<s>/)")


def failure_text(outcome: StageOutcome) -> str:
    """What failed in one run folder, as `finish` prints it and summary.txt ends with it."""
    lines = [f"FAILED: {len(outcome.failed)} machine type(s); done: {len(outcome.done)}"
             f" ({', '.join(outcome.done) or 'none'})"]
    lines += [f"  {key}: {why}" for key, why in outcome.failed.items()]
    if outcome.rerun_hint:
        lines.append(f"  once mended, {outcome.rerun_hint}")
    return "\n".join(lines)


def _record_failures(outcome: StageOutcome) -> None:
    """Append what failed to summary.txt, while the stage still holds the run folder."""
    if outcome.failed and outcome.reported:
        outcome.folder.append_summary_text(failure_text(outcome))


def finish(outcomes: list[StageOutcome]) -> None:
    """Print what failed (the stage appended it to summary.txt) and exit 1 if anything did."""
    failed = [outcome for outcome in outcomes if outcome.failed]
    if not failed:
        return
    for outcome in failed:
        click.echo("\n" + failure_text(outcome))
    raise SystemExit(1)
