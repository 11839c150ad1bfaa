"""Benchmark: an ensemble of finished runs, without training again. The models of two or more runs on the
same training clips and features (the first run's processed folder is scored) and the same seed (e.g. a
`gmm` run and an `embed` run kept by bench_quality.py) are put on one scale exactly as the `ensemble` model
does (`EnsembleDetector.adopt`), thresholded as `asd train` does and scored on the test clips:

    python bench/bench_combine_runs.py --runs RUN_GMM,RUN_EMBED [--later-members-min-clips 500] [--refit]

With the members and seed of a `--model auto` run, this is what that run would score: `auto` fits each
member as its own run does (the learned one through the same shared fit). ``--refit`` first fits the
reference banks and calibration of every learned member again with this version's code, from the run's
networks (for runs made before a calibration change). Prints per machine type and overall the official
score (each dataset's rules), AUC (source) / AUC (target) and the share of normal test clips flagged per
domain, for every member alone and for the ensemble. Quality is measured on test labels here: read it as a
comparison, never as tuning on the set that is then quoted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "source"))
sys.path.insert(0, str(ROOT))

from asd.cache.shard import Shard  # noqa: E402
from asd.cache.store import discover  # noqa: E402
from asd.engine.config import RunConfig  # noqa: E402
from asd.engine.test import score_shards  # noqa: E402
from asd.engine.train import fit_thresholds  # noqa: E402
from asd.models.base import Detector  # noqa: E402
from asd.models.checkpoint import load_detector  # noqa: E402
from asd.models.embedding_knn import EmbeddingKnnDetector, FoldNetworks  # noqa: E402
from asd.models.registry import make_detector  # noqa: E402
from asd.run_folder import RunFolder  # noqa: E402
from bench_knn_variants import quality, run_config_of, run_folds  # noqa: E402


def refitted(detector: EmbeddingKnnDetector, shard: Shard, clips: np.ndarray, folds: np.ndarray,
             config: RunConfig) -> EmbeddingKnnDetector:
    """The learned detector's banks and calibration fitted again by this version's code, from its networks
    and the run's folds (what `fit` does after training)."""
    fresh = make_detector(config.model, **config.model_options)
    fresh.shared_ = FoldNetworks(detector.networks_, detector.class_names_, {shard.machine: (clips, folds)},
                                 detector.history_)
    fresh.fit(shard, clips, config.fit, log=lambda line: None)
    fit_thresholds(fresh, config)
    return fresh


def ensemble_of(members: list[Detector], config: RunConfig, min_clips: int) -> Detector:
    """The ensemble of fitted members, with its thresholds, as `asd train` leaves it."""
    n_clips = len(members[0].decision_scores_)
    names = tuple(m.name for m in members)
    ensemble = make_detector("ensemble", members=names, later_members_min_clips=min_clips)
    chosen = members[:len(ensemble.config.members_for(n_clips))]
    scores = ensemble.adopt(chosen, log=lambda line: None)
    first = members[0]
    ensemble.fingerprint_, ensemble.feature_config_, ensemble.fit_config_ = \
        first.fingerprint_, first.feature_config_, first.fit_config_
    ensemble.decision_scores_ = first.decision_scores_.assign(score=scores)
    fit_thresholds(ensemble, config)
    return ensemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="run folders, comma-separated; the first member first")
    parser.add_argument("--later-members-min-clips", type=int, default=None,
                        help="default: that of the `auto` model")
    parser.add_argument("--refit", action="store_true", help="refit the learned members' banks and calibration")
    args = parser.parse_args()
    folders = [RunFolder(Path(p)) for p in args.runs.split(",") if p]
    configs = [run_config_of(folder) for folder in folders]
    if len({c.fit.seed for c in configs}) != 1:
        raise SystemExit("the runs must share the seed: " + ", ".join(
            f"{f.path} (seed {c.fit.seed})" for f, c in zip(folders, configs, strict=True)))
    min_clips = (make_detector("auto").config.later_members_min_clips if args.later_members_min_clips is None
                 else args.later_members_min_clips)
    machines = [m for m in discover(configs[0].processed_dir, list(configs[0].machines) or None)
                if m.tests and m.train]
    folds_of = [run_folds(c, machines) if args.refit and c.make_detector().trains_network else None
                for c in configs]
    results: dict[str, list[pd.DataFrame]] = {}
    rules: dict[str, str] = {}
    rows = []
    for machine in machines:
        shard = Shard(machine.train)
        members = []
        for folder, config, folds in zip(folders, configs, folds_of, strict=True):
            detector = load_detector(folder.model_path(machine.dataset, machine.machine))
            if folds is not None and isinstance(detector, EmbeddingKnnDetector):
                detector = refitted(detector, shard, *folds[machine.key], config)
            members.append(detector)
        names = [c.model for c in configs]
        if any(m.fingerprint_ != members[0].fingerprint_
               or not m.decision_scores_["file_name"].equals(members[0].decision_scores_["file_name"])
               for m in members):
            raise SystemExit(f"{machine.key}: the runs were fitted on other features or training clips")
        ensemble = ensemble_of(members, configs[0], min_clips)
        scorers = [*zip(names, members, strict=True), ("+".join(names), ensemble)]
        for name, detector in scorers:
            predictions, rules[machine.dataset] = score_shards(detector, machine, "cpu")
            results.setdefault(name, []).append(predictions)
            rows.append({"machine": machine.key, "scorer": name,
                         **quality(predictions, rules)})
        print(pd.DataFrame(rows[-len(scorers):]).to_string(index=False, float_format="{:.4f}".format), flush=True)
    overall = pd.DataFrame([{"scorer": name, **quality(pd.concat(frames, ignore_index=True), rules)}
                            for name, frames in results.items()])
    print(f"\nall machine types (later members from {min_clips} training clips"
          + (", learned members refitted" if args.refit else "") + "):\n"
          + overall.to_string(index=False, float_format="{:.4f}".format))


if __name__ == "__main__":
    main()
