"""A small Python API for notebooks: the stages of the command line, without the files in between.

    import asd

    cache = asd.open_cache("data/processed/synth")    # what data_prep wrote
    fan = cache.machine("fan")                         # one machine type's shards
    detector = asd.fit(fan, seed=0)                    # the default model, fitted on its normal clips
    table = asd.score(detector, fan)                   # every test clip: score, threshold, decision
    files, skipped = asd.score_files(detector, ["some/recording.wav"])
    run = asd.load_run("output/<run>")                 # a finished run: its configuration, tables, models

The objects are those the command line uses (`MachineData`, `Detector`, pandas tables), so anything done
here can be saved and read back by the commands and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asd.cache.store import MachineData, discover
from asd.errors import BadInput
from asd.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import pandas as pd

    from asd.engine.config import RunConfig
    from asd.models.base import Detector
    from asd.run_folder import RunFolder


@dataclass(frozen=True)
class Cache:
    """A processed folder (`data/processed` or one dataset's folder in it) and the machine types in it."""

    processed_dir: Path

    @property
    def machines(self) -> list[MachineData]:
        """Every machine type with shards, by dataset."""
        return discover(self.processed_dir)

    def machine(self, name: str, dataset: str | None = None) -> MachineData:
        """One machine type's shards (`dataset` chooses when several datasets have it)."""
        found = [m for m in self.machines if m.machine == name and dataset in (None, m.dataset)]
        if len(found) != 1:
            known = ", ".join(m.key for m in self.machines) or "none"
            raise BadInput(f"{'no' if not found else 'more than one'} machine type {name!r} in {self.processed_dir} "
                           f"(found: {known}); {'check the name' if not found else 'choose with dataset='}")
        return found[0]


def open_cache(processed_dir: str | Path = "data/processed") -> Cache:
    """The shards data_prep wrote under `processed_dir`."""
    if not Path(processed_dir).is_dir():
        raise BadInput(f"{processed_dir} is not a folder; prepare a cache first (`asd prep`)")
    return Cache(Path(processed_dir))


def fit(machine: MachineData, model: str = DEFAULT_MODEL, model_options: dict[str, Any] | None = None,
        **settings: Any) -> Detector:
    """A detector of `model` fitted on the machine type's normal training clips, its thresholds fitted on
    their out-of-fold scores, exactly as `asd train` does. `model_options` set fields of the model's config;
    `settings` are those of the run (`val_fraction`, `threshold_percentile`, ...) or of the fit (`seed`,
    `epochs`, `device`, `aggregate`, ...)."""
    from asd.engine.config import RunConfig
    from asd.engine.train import fit_machine
    from asd.models.base import FitConfig

    run_fields = set(RunConfig.__dataclass_fields__) - {"fit", "model", "model_options"}
    fit_settings = {k: v for k, v in settings.items() if k not in run_fields}
    unknown = set(fit_settings) - set(FitConfig.__dataclass_fields__)
    if unknown:
        raise BadInput(f"unknown setting(s) {sorted(unknown)}; a run has {sorted(run_fields)}, a fit "
                       f"{sorted(FitConfig.__dataclass_fields__)}")
    config = RunConfig(model=model, model_options=dict(model_options or {}),
                       **{k: v for k, v in settings.items() if k in run_fields}, fit=FitConfig(**fit_settings))
    detector, _ = fit_machine(machine, config, log=lambda line: None)
    return detector


def score(detector: Detector, machine: MachineData, device: str = "auto") -> pd.DataFrame:
    """Every test clip of a machine type scored and decided: dataset, file_name, machine, section, domain,
    label, score, threshold, decision (as in predictions.csv)."""
    from asd.engine.test import score_shards

    return score_shards(detector, machine, device)[0]


def score_files(detector: Detector, paths: list[str | Path], device: str = "auto"
                ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """wav files (any names) or folders of them, decoded as data_prep does and scored: the table (file,
    section, score, threshold, decision) and the files skipped with the reason."""
    from asd.engine.score_files import score_paths

    return score_paths(detector, "scored", [Path(p) for p in paths], device=device)


@dataclass
class Run:
    """A finished run folder: its configuration, its tables and its models."""

    folder: RunFolder

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def config(self) -> RunConfig:
        """The run configuration config.json records."""
        from asd.engine.config import recorded_config

        return recorded_config(self.folder)

    @property
    def predictions(self) -> pd.DataFrame:
        """predictions.csv: one row per test clip."""
        return self.folder.read_predictions()

    @property
    def thresholds(self) -> pd.DataFrame | None:
        return self.folder.read_thresholds()

    def summary(self, dataset: str) -> pd.DataFrame:
        """`<dataset>/summary.csv`: every metric per machine type and section."""
        return self.folder.read_summary(dataset)

    def official_score(self, dataset: str) -> float:
        table = self.folder.read_official_scores(dataset).set_index("metric")["value"]
        return float(table["official score"])

    def detector(self, machine: str, dataset: str | None = None) -> Detector:
        """The saved model of a machine type, loaded."""
        from asd.models.checkpoint import load_detector

        return load_detector(self.folder.find_model(machine, dataset))


def load_run(path: str | Path) -> Run:
    """A run folder that `asd run` or `asd train` wrote."""
    from asd.run_folder import RunFolder

    return Run(RunFolder.existing(path))
