"""The run configuration: built once, at the command line's edge, frozen, and written as it is into
`config.json` and every `model.pt`. Everything a train or test stage does follows from it.

`RunConfig.from_options` turns the options of `run`/`train` into one, checking the model's own settings
(`--model-option`, `--members`) against the model's config before any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from asd.errors import BadInput
from asd.evaluation.thresholds import METHODS as THRESHOLD_METHODS
from asd.models.base import Detector, FitConfig
from asd.models.registry import DEFAULT_MODEL, make_detector, model_class
from asd.run_folder import RunFolder


@dataclass(frozen=True)
class RunConfig:
    """What a run trains and how: the model and its settings, the cache it reads, how thresholds are
    fitted, and the fit settings the model reads (`FitConfig`)."""

    model: str = DEFAULT_MODEL
    model_options: dict[str, Any] = field(default_factory=dict)  # fields of the model's config
    processed_dir: str = "data/processed"
    machines: tuple[str, ...] = ()  # empty: every machine type found
    # Extra processed folders whose normal training clips the learned detectors also learn from, as
    # auxiliary classes (never scored): another dataset, the synthetic set, your own recordings.
    aux_processed_dirs: tuple[str, ...] = ()
    val_fraction: float = 0.0  # normal clips held out of everything (by clip): an independent false-alarm check
    threshold_method: str = "gamma"
    threshold_percentile: float = 90.0
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "machines", tuple(self.machines))
        object.__setattr__(self, "aux_processed_dirs", tuple(str(d) for d in self.aux_processed_dirs))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, not {self.threshold_method!r}")
        if not 0.0 < self.threshold_percentile < 100.0:
            raise ValueError(f"threshold_percentile must be in (0, 100), got {self.threshold_percentile}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunConfig:
        """The configuration of a `run`/`train` command's options; BadInput names a wrong one."""
        model = options["model"]
        try:
            fit = FitConfig(epochs=options["epochs"], seed=options["seed"], device=options["device"],
                            aggregate=options["aggregate"], max_epochs=options.get("max_epochs"),
                            patience=options.get("patience", FitConfig.patience),
                            min_delta=options.get("min_delta", FitConfig.min_delta),
                            threads=options.get("threads", FitConfig.threads))
            config = cls(model=model, model_options=_model_options(model, options),
                         processed_dir=str(options["processed_dir"]), machines=tuple(options["machines"]),
                         aux_processed_dirs=tuple(str(d) for d in options.get("aux_processed_dir", ())),
                         val_fraction=options["val_fraction"], threshold_method=options["threshold_method"],
                         threshold_percentile=options["threshold_percentile"], fit=fit)
        except ValueError as err:
            raise BadInput(str(err)) from None
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), as config.json, task.json and every model.pt hold them."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`."""
        record = dict(record)
        record["fit"] = FitConfig.from_dict(record.get("fit", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def with_seed(self, seed: int) -> RunConfig:
        return replace(self, fit=replace(self.fit, seed=seed))

    def with_device(self, device: str) -> RunConfig:
        return replace(self, fit=replace(self.fit, device=device))

    def make_detector(self) -> Detector:
        """A fresh, unfitted detector of this run's model and settings."""
        return make_detector(self.model, **self.model_options)


def _parse_model_option(text: str, fields: dict) -> tuple[str, object]:
    """`FIELD=VALUE` -> (field, value converted to the field's type); BadInput naming what is wrong."""
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
            return name, _number(json.loads(raw), type(default))
        if isinstance(default, tuple):
            return name, _finite(_listed_values(raw))
        return name, raw if default is None or isinstance(default, str) else _finite(json.loads(raw))
    except (ValueError, TypeError) as err:
        raise BadInput(f"--model-option {text!r}: {err}") from None


def _listed_values(raw: str) -> tuple:
    """A list setting's values: `0,0.5` or `[0, 0.5]` (JSON values), `gmm,embed` (words), or nothing at
    all for an empty list; ValueError for a list inside the list."""
    text = raw.strip()
    if not text:
        return ()
    try:
        values = json.loads(text if text.startswith("[") else f"[{text}]")
    except json.JSONDecodeError:
        values = [word.strip() for word in text.strip("[]").split(",")]
    if not isinstance(values, list) or any(isinstance(v, (list, dict)) for v in values):
        raise ValueError(f"expected comma-separated values such as 0,0.5, not {raw!r}")
    return tuple(values)


def _number(value: object, kind: type) -> int | float:
    """A model setting's number as its field's type: a whole-number field refuses `1.7` (never truncated),
    and no field takes nan or infinity (json reads `NaN`, `Infinity` and `1e999`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, not {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"expected a whole number, not {value!r}")
    return kind(_finite(value))


def _finite(value):
    """`value` unchanged when every number in it is finite; ValueError otherwise."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise ValueError(f"{value!r} holds a number that is not finite (nan and infinity are refused)")
    return value


def _model_options(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model config overrides from `--members` (ensemble only) and `--model-option`, checked against the
    model's config before any work."""
    members = tuple(options.get("members") or ())
    if members and "members" not in {f.name for f in dataclasses.fields(model_class(model).config_class)}:
        raise BadInput(f"--members applies to --model ensemble or auto, not --model {model}")
    overrides: dict[str, Any] = {"members": members} if members else {}
    if options.get("model_option"):
        fields = {f.name: f for f in dataclasses.fields(model_class(model).config_class)}
        overrides.update(_parse_model_option(text, fields) for text in options["model_option"])
    if overrides:
        try:
            make_detector(model, **overrides)
        except (ValueError, TypeError) as err:
            flag = "--model-option" if options.get("model_option") else "--members"
            raise BadInput(f"{flag}: {err}") from None
    return overrides


def recorded_config(folder: RunFolder) -> RunConfig:
    """The run configuration a run folder's config.json records; DamagedFile (naming the file) when its
    values are not one (another version's record, or edited by hand)."""
    try:
        return RunConfig.from_dict(folder.run_record())
    except (TypeError, ValueError, AttributeError) as err:
        raise folder.damaged_config(f"its run record: {err}") from None
