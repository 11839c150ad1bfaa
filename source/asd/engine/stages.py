"""The train and test stages as the command line runs them: every machine type in turn, one that fails
with an AsdError is reported and skipped, the others go on, and the outcome lists what failed.

Everything a stage needs is checked before the first machine type starts (shards found, device, run
folder writable); each machine type's shards are checked before its own work starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import click

from asd.cli.config_file import write_effective_config
from asd.cli.options import check_writable_dir
from asd.errors import AsdError, BadInput, BadState


@dataclass
class StageOutcome:
    """What a stage did: the run folder, the machine types done, and those that failed with the reason."""

    run_dir: Path
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    reported: bool = False  # summary.txt written by this command

    def fail(self, key: str, stage: str, err: Exception | str) -> None:
        self.failed[key] = f"{stage}: {err}"
        click.echo(f"error: {key}: {stage} failed: {err}", err=True)


def new_run_dir(model: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("output") / f"{stamp}_{model}"
    suffix = 1
    while path.exists():  # runs never overwrite each other
        path = Path("output") / f"{stamp}_{model}-{suffix}"
        suffix += 1
    return path


def _discover_checked(processed_dir: Path, machines: tuple[str, ...]):
    from asd.engine.train import discover

    items = discover(processed_dir, list(machines) or None)
    if machines:
        missing = sorted(set(machines) - {i.machine for i in items})
        if missing:
            found = sorted({i.machine for i in discover(processed_dir)})
            raise BadInput(f"--machines: no shards for {', '.join(missing)} under {processed_dir} "
                           f"(found: {', '.join(found) or 'none'})")
    if not items:
        raise BadState(f"no shards under {processed_dir}; run `python source/data_prep.py` first")
    return items


def train_config_from_options(options: dict):
    """The TrainConfig of a `train`/`run` command's options."""
    from asd.models.base import TrainConfig

    return TrainConfig(epochs=options["epochs"], seed=options["seed"], device=options["device"],
                       val_fraction=options["val_fraction"], aggregate=options["aggregate"],
                       threshold_method=options["threshold_method"],
                       threshold_percentile=options["threshold_percentile"],
                       max_epochs=options.get("max_epochs"), patience=options.get("patience", 5),
                       min_delta=options.get("min_delta", 0.005), threads=options.get("threads", 0))


def _parse_model_option(text: str, fields: dict) -> tuple[str, object]:
    """`FIELD=VALUE` -> (field, value converted to the field's type); BadInput naming what is wrong."""
    import dataclasses
    import json

    name, sep, raw = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in fields:
        raise BadInput(f"--model-option {text!r}: expected FIELD=VALUE with FIELD one of "
                       f"{', '.join(sorted(fields))}")
    default = fields[name].default if fields[name].default is not dataclasses.MISSING else None
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return name, raw.lower() in ("true", "1", "yes")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            return name, type(default)(json.loads(raw))
        if isinstance(default, tuple):
            return name, tuple(json.loads(f"[{raw}]")) if raw.strip() else ()
        return name, raw if default is None or isinstance(default, str) else json.loads(raw)
    except (ValueError, TypeError) as err:
        raise BadInput(f"--model-option {text!r}: {err}") from None


def model_options_from(options: dict) -> dict:
    """Model config overrides from the command line: `--members` (ensemble only) and `--model-option`,
    checked against the model's config before any work."""
    import dataclasses

    from asd.models.registry import make_detector

    model = options["model"]
    members = tuple(options.get("members") or ())
    if members and model != "ensemble":
        raise BadInput(f"--members applies to --model ensemble, not --model {model}")
    overrides: dict = {"members": members} if members else {}
    if options.get("model_option"):
        config_class = make_detector(model).config_class
        fields = {f.name: f for f in dataclasses.fields(config_class)}
        overrides.update(_parse_model_option(text, fields) for text in options["model_option"])
    if not overrides:
        return {}
    try:
        make_detector(model, **overrides)
    except (ValueError, TypeError) as err:
        flag = "--members" if set(overrides) == {"members"} else "--model-option"
        raise BadInput(f"{flag}: {err}") from None
    return overrides


def _fit_shared_checked(items, run_dir: Path, model: str, train, model_options: dict) -> dict:
    """What `pipeline.fit_shared` trains across machine types, from the shards that pass their checks
    (a damaged one is reported when its own turn comes)."""
    from asd.engine.train import fit_shared
    from asd.run_checks import check_shard

    usable = []
    for item in items:
        try:
            if item.train is not None:
                check_shard(item.train)
                usable.append(item)
        except AsdError:
            continue
    start = time.perf_counter()
    shared = fit_shared(usable, run_dir, model, train, model_options)
    for dataset in shared:
        click.echo(f"  {dataset}: one network for its machine types in {time.perf_counter() - start:.1f} s "
                   f"(log: {run_dir / dataset / 'shared_train.log'})")
    return shared


def train_stage(options: dict, command: str) -> StageOutcome:
    """Train every machine type found (options as the `train` command takes them)."""
    import pandas as pd

    from asd.engine.train import machine_dir, train_config_record, train_machine, write_config
    from asd.models.base import resolve_device
    from asd.models.registry import make_detector
    from asd.run_checks import check_shard, remove_partial_files

    model, epochs = options["model"], options["epochs"]
    model_options = model_options_from(options)  # before anything else: a wrong field costs nothing
    items = _discover_checked(options["processed_dir"], options["machines"])
    device = resolve_device(options["device"])  # BadInput before any work when no GPU is there
    run_dir = check_writable_dir(options["output_dir"] or new_run_dir(model), "--output-dir")
    train = train_config_from_options(options)
    used_epochs = epochs or getattr(make_detector(model, **model_options).config, "epochs", None)
    write_config(run_dir, {**train_config_record(train, model, options["processed_dir"], model_options),
                           "machines": list(options["machines"]), "failed": {},
                           "used": {"epochs": used_epochs, "device": str(device)}})
    write_effective_config(run_dir / "config.yaml", options, f"python source/main.py {command}",
                           left_out={"output_dir": "a repeat writes a new run folder; add --output-dir to "
                                                   "choose one"})
    click.echo(f"training {model} on {len(items)} machine type(s) -> {run_dir}")
    outcome, rows = StageOutcome(run_dir), []
    shared = _fit_shared_checked(items, run_dir, model, train, model_options)
    for item in items:
        if item.train is None:
            outcome.fail(item.key, "train", f"no train.h5 shard (no training clips); put normal clips in "
                                            f"{item.machine}/train/ and rerun `python source/data_prep.py`")
            continue
        start = time.perf_counter()
        try:
            check_shard(item.train)
            remove_partial_files(machine_dir(run_dir, item))  # left by a run killed while saving
            machine_rows = train_machine(item, run_dir, model, train, model_options, shared.get(item.dataset))
        except AsdError as err:
            outcome.fail(item.key, "train", err)
            continue
        rows += machine_rows
        outcome.done.append(item.key)
        pooled = machine_rows[-1]
        click.echo(f"  {item.key:<40} {time.perf_counter() - start:6.1f} s   threshold {pooled['threshold']:.4g}"
                   f"  false alarms on held-out normals {pooled['false_alarm_rate']:.1%} (cross-fitted)")
    if rows:
        pd.DataFrame(rows).to_csv(run_dir / "thresholds.csv", index=False)
    write_config(run_dir, {"trained": outcome.done, "failed": outcome.failed})
    return outcome


def test_stage(run_dir: Path, machines: tuple[str, ...] = (), device: str | None = None,
               outcome: StageOutcome | None = None) -> StageOutcome:
    """Score the test shards of every trained machine type; write official files, metrics and plots."""
    import pandas as pd

    from asd.engine.train import discover, machine_dir, test_machine, write_machine_outputs
    from asd.models.base import TrainConfig, resolve_device
    from asd.reports.summary import report_run
    from asd.run_checks import check_shard

    outcome = outcome or StageOutcome(Path(run_dir))
    if not (run_dir / "config.json").is_file():
        raise BadState(f"{run_dir} is not a run folder (no config.json); make one with "
                       "`python source/main.py train`")
    config = json.loads((run_dir / "config.json").read_text())
    train = TrainConfig(**{**config["train"], **({"device": device} if device else {})})
    resolve_device(train.device)
    check_writable_dir(run_dir, "--run")
    machines = machines or tuple(config.get("machines", ()))
    trained_failed = config.get("failed", {})
    items = [i for i in discover(Path(config["processed_dir"]), list(machines) or None) if i.tests]
    if not items:
        raise BadState(f"nothing to test in {run_dir}: no machine type of it has test shards under "
                       f"{config['processed_dir']}")
    click.echo(f"testing {len(items)} machine type(s) from {run_dir}")
    all_predictions = []
    for item in items:
        if not (machine_dir(run_dir, item) / "model.pt").is_file():
            if item.key not in outcome.failed:  # not already reported by the train stage of this command
                why = trained_failed.get(item.key, "not trained in this run")
                outcome.fail(item.key, "test", f"no model.pt ({why})")
            continue
        try:
            for path in item.tests:
                check_shard(path)
            predictions, rules = test_machine(item, run_dir, train)
        except AsdError as err:
            outcome.fail(item.key, "test", err)
            continue
        write_machine_outputs(item, run_dir, predictions, rules)
        all_predictions.append(predictions.assign(rules=rules))
        if item.key not in outcome.done:
            outcome.done.append(item.key)
    if all_predictions:
        click.echo(report_run(run_dir, pd.concat(all_predictions, ignore_index=True)))
        outcome.reported = True
        from asd.reports.run_page import write_run_report

        click.echo(f"report: {write_run_report(run_dir)}  (open it in a browser)")
    return outcome


def finish(outcome: StageOutcome) -> None:
    """Print what failed (also appended to summary.txt) and exit 1 if anything did."""
    if not outcome.failed:
        return
    lines = [f"FAILED: {len(outcome.failed)} machine type(s); done: {len(outcome.done)}"
             f" ({', '.join(outcome.done) or 'none'})"]
    lines += [f"  {key}: {why}" for key, why in outcome.failed.items()]
    text = "\n".join(lines)
    click.echo("\n" + text)
    summary = outcome.run_dir / "summary.txt"
    if outcome.reported and summary.is_file():
        with open(summary, "a") as file:
            file.write("\n" + text + "\n")
    raise SystemExit(1)
