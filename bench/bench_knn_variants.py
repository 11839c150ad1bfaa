"""Benchmark: ten target clips among a thousand. The reference banks of a finished learned run (`embed` or
`twobranch`) rebuilt with each variant of the sparse target bank, scored and calibrated exactly as the
detector does, from the same networks (no retraining):

    python bench/bench_knn_variants.py --run output/<run> [--variants base,mixup4,density,mixup4+density]

* ``mixup<N>``: N synthetic target entries per target clip, on segments between target clips (SMOTE-style);
* ``density``: each distance divided by the entry's local scale (mean distance to its 5 nearest clips);
* ``sd<N>``: the calibration's ``min_clips_for_sd`` set to N (a domain with fewer clips borrows a spread);
* ``abs`` / ``rel``: the borrowed spread as it is, or relative to the borrower's mean (``relative_spread``).

Every network embeds each training and test clip once; the folds of the run are rebuilt from its
configuration (the same deterministic assignment), so each variant's calibration uses distances of clips
that neither the network nor the bank saw, as in training. Prints per variant the official score (the
run's rules), AUC (source) / AUC (target) and the share of normal test clips flagged per domain, with the
time the variant's banks took; `base` is the detector as it is (a run made by this version of the code
scores the same). Quality is measured on test labels here: read it as a comparison of variants, never as
tuning on the set that is then quoted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "source"))

from asd.cache.shard import Shard  # noqa: E402
from asd.cache.store import discover  # noqa: E402
from asd.dataset.layout import rules_for_files  # noqa: E402
from asd.engine.config import RunConfig  # noqa: E402
from asd.engine.train import normal_split, shared_groups  # noqa: E402
from asd.evaluation.metrics import dataset_score, metrics_table  # noqa: E402
from asd.evaluation.thresholds import fit_threshold_table  # noqa: E402
from asd.models.checkpoint import load_detector, read_checkpoint  # noqa: E402
from asd.models.embedding_knn import class_names_of  # noqa: E402
from asd.models.fold_networks import FoldCalibration, assign_folds  # noqa: E402
from asd.models.knn_domain import DomainBanks  # noqa: E402
from asd.run_folder import RunFolder  # noqa: E402


def parse_variant(name: str) -> tuple[int, bool, int | None, bool | None]:
    """``base``, ``mixup<N>``, ``density``, ``sd<N>``, ``abs``, ``rel`` or a ``+`` of them
    (``mixup4+density``) -> (target_mixup, density_scaling, min_clips_for_sd, relative_spread), the last two
    None for the run's own."""
    mixup, density, min_clips, relative = 0, False, None, None
    for part in name.split("+"):
        if part.startswith("sd") and part[2:].isdigit():
            min_clips = int(part[2:])
        elif part.startswith("mixup"):
            mixup = int(part.removeprefix("mixup") or 4)
        elif part == "density":
            density = True
        elif part in ("abs", "rel"):
            relative = part == "rel"
        elif part != "base":
            raise SystemExit(f"unknown variant part {part!r}")
    return mixup, density, min_clips, relative


def run_folds(config: RunConfig, machines: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training clips, fold of each) per machine type, keyed by ``dataset/machine`` (two datasets may both
    have a valve), assigned as `fit_shared` / `fit` did."""
    n = config.make_detector().config.n_networks
    grouped = list(shared_groups(machines, config).values())
    alone = [[m] for m in machines if not any(m in group for group in grouped)]  # trained in `fit`
    out = {}
    for group in [*grouped, *alone]:
        shards = [Shard(m.train) for m in group]
        parts = [(m.machine, shard, normal_split(shard, config)[0]) for m, shard in zip(group, shards, strict=True)]
        names = class_names_of(parts, prefixed=group not in alone)
        folds = assign_folds(names, n, config.fit.seed)
        first = 0
        for machine, (_, _, clips) in zip(group, parts, strict=True):
            out[machine.key] = (clips, folds[first:first + len(clips)])
            first += len(clips)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--variants", default="base,mixup4,density,mixup4+density")
    args = parser.parse_args()
    folder = RunFolder(args.run)
    config = run_config_of(folder)
    machines = [m for m in discover(config.processed_dir, list(config.machines) or None) if m.tests and m.train]
    folds_of = run_folds(config, machines)
    variants = [v for v in args.variants.split(",") if v]
    cache = {}
    for machine in machines:  # every network embeds every clip once
        detector = load_detector(folder.model_path(machine.dataset, machine.machine))
        train, clips = Shard(machine.train), folds_of[machine.key][0]
        tests = [Shard(path) for path in machine.tests]
        cache[machine.key] = {
            "train": [detector._embed(net, train, clips, "cpu") for net in detector.networks_],
            "test": [[detector._embed(net, shard, shard.clips.index.to_numpy(), "cpu") for shard in tests]
                     for net in detector.networks_],
            "table": train.clips.loc[clips], "tests": tests, "detector": detector}
        print(f"embedded {machine.key}", flush=True)
    rows = []
    for variant in variants:
        mixup, density, min_clips, relative = parse_variant(variant)
        start, scored = time.perf_counter(), []
        for machine in machines:
            item, folds = cache[machine.key], folds_of[machine.key][1]
            own = item["detector"].config
            sections = item["table"]["section"].to_numpy().astype(str)
            domains = item["table"]["domain"].to_numpy().astype(str)
            banks, raw_by_network = [], []
            for k, embeddings in enumerate(item["train"]):
                bank = DomainBanks(own.n_source_centroids, config.fit.seed, mixup,
                                   density).fit(embeddings, sections, domains)
                raw = bank.distances(embeddings, sections)
                raw[folds == k] = bank.held_out(embeddings, sections, domains, folds == k)
                banks.append(bank)
                raw_by_network.append(raw)
            calibration, out_of_fold = FoldCalibration.fit(raw_by_network, folds, sections, domains,
                                                           min_clips or own.min_clips_for_sd,
                                                           own.relative_spread if relative is None else relative)
            thresholds = {(r["section"], r["domain"]): r["threshold"] for r in fit_threshold_table(
                out_of_fold, sections, domains, config.threshold_method, config.threshold_percentile)}
            for i, shard in enumerate(item["tests"]):
                test_sections = shard.clips["section"].to_numpy().astype(str)
                scores = calibration.combine([bank.distances(item["test"][k][i], test_sections)
                                              for k, bank in enumerate(banks)], test_sections)
                table = shard.clips[["file_name", "section", "domain", "label"]].assign(
                    score=scores, dataset=machine.dataset, machine=machine.machine)
                table["threshold"] = [thresholds.get((s, "target" if d == "target" else "source"),
                                                     thresholds.get((s, "*"), thresholds[("*", "*")]))
                                      for s, d in zip(table["section"], table["domain"], strict=True)]
                table["decision"] = (table["score"] > table["threshold"]).astype(int)
                scored.append(table)
        seconds = time.perf_counter() - start
        frame = pd.concat(scored, ignore_index=True)
        rules = {dataset: rules_for_files(part["file_name"].tolist(),
                                          [p.stem for m in machines if m.dataset == dataset for p in m.tests])
                 for dataset, part in frame.groupby("dataset")}
        rows.append({"variant": variant, **quality(frame, rules), "banks s": seconds})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="{:.4f}".format), flush=True)
    print(f"\nrun {args.run} ({config.model}, seed {config.fit.seed}; its own official score "
          f"{_official(folder, machines[0].dataset)}):\n"
          + pd.DataFrame(rows).to_string(index=False, float_format="{:.4f}".format))


def quality(frame: pd.DataFrame, rules: dict[str, str]) -> dict:
    """What a scorer's predictions ``frame`` (several datasets and machine types; ``rules`` per dataset)
    are worth: the official score (each dataset under its own rules; their mean, and each one where there
    are several), the mean official over machine types (bench_quality's "mean over sets"), the mean AUCs,
    and the share of normal test clips flagged per domain, overall and per machine type (source / target)."""
    officials, per_type, metrics = {}, [], []
    for dataset, part in frame.groupby("dataset", sort=False):
        officials[dataset] = dataset_score(part, rules[dataset])["official score"]
        per_type += [dataset_score(one, rules[dataset])["official score"] for _, one in part.groupby("machine")]
        metrics.append(metrics_table(part, rules[dataset]))
    table = pd.concat(metrics, ignore_index=True)
    normal = frame[frame["label"] == "normal"]
    flagged = normal.assign(target=normal["domain"] == "target").groupby(["dataset", "machine", "target"],
                                                                        sort=False)["decision"].mean()
    return {"official": float(np.mean(list(officials.values()))),
            **({"per dataset": " ".join(f"{v:.4f}" for v in officials.values())} if len(officials) > 1 else {}),
            "mean over types": float(np.mean(per_type)),
            "AUC (source)": table.get("AUC (source)", table.get("AUC")).mean(),
            "AUC (target)": table["AUC (target)"].mean() if "AUC (target)" in table else np.nan,
            "flagged source": normal.loc[normal["domain"] != "target", "decision"].mean(),
            "flagged target": normal.loc[normal["domain"] == "target", "decision"].mean(),
            "flagged per type": " ".join(
                f"{machine}:" + "/".join(f"{flagged[(dataset, machine, t)]:.0%}" for t in (False, True)
                                         if (dataset, machine, t) in flagged)
                for dataset, machine in dict.fromkeys(zip(normal["dataset"], normal["machine"], strict=True)))}


def run_config_of(folder: RunFolder) -> RunConfig:
    """The run's configuration: from config.json, else (bench_quality's runs) from a model.pt."""
    if folder.config_json.is_file():
        return RunConfig.from_dict(folder.run_record())
    model = next(folder.path.rglob("model.pt"))  # a bench run folder: every model holds the run configuration
    return RunConfig.from_dict(read_checkpoint(model)["run_config"])


def _official(folder: RunFolder, dataset: str) -> str:
    """The run's own official score, where its test stage wrote one (bench_quality's runs do not)."""
    path = folder.official_score_csv(dataset)
    if not path.is_file():
        return "not written"
    table = pd.read_csv(path, dtype=str)
    return str(table.loc[table["metric"] == "official score", "value"].iloc[0])


if __name__ == "__main__":
    main()
