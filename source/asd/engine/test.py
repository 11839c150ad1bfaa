"""Testing one machine type: every test clip scored by its saved model and decided by its thresholds, then
the official files, `result.csv` and plots of that machine type."""

from __future__ import annotations

import pandas as pd

from asd.cache.shard import Shard
from asd.cache.store import MachineData
from asd.dataset.layout import rules_for_files
from asd.engine.config import RunConfig
from asd.models.base import Detector
from asd.models.checkpoint import load_detector
from asd.run_folder import RunFolder


def score_machine(machine: MachineData, config: RunConfig, folder: RunFolder) -> tuple[pd.DataFrame, str]:
    """Score every test clip of a machine type with the model the run saved for it (see `score_shards`)."""
    detector = load_detector(folder.model_path(machine.dataset, machine.machine))
    return score_shards(detector, machine, config.fit.device)


def score_shards(detector: Detector, machine: MachineData, device: str = "auto") -> tuple[pd.DataFrame, str]:
    """Score and decide every test clip of a machine type; returns the predictions (one row per clip:
    dataset, file, machine, section, domain, label, score, threshold, decision) and the DCASE rules that
    fit its clips."""
    frames, split_folders = [], []
    for path in machine.tests:
        shard = Shard(path)
        split_folders.append(path.stem)
        scores = detector.score_clips(shard, device=device)
        clips = shard.clips.loc[scores.index]
        frames.append(pd.DataFrame({
            "file_name": clips["file_name"].to_numpy(), "machine": machine.machine,
            "section": clips["section"].to_numpy(), "domain": clips["domain"].to_numpy(),
            "label": clips["label"].to_numpy(), "score": scores.to_numpy(),
        }))
        shard.close()
    predictions = pd.concat(frames, ignore_index=True)
    predictions["threshold"], predictions["decision"] = detector.decisions(
        predictions["score"].to_numpy(), predictions["section"].to_numpy(), predictions["domain"].to_numpy())
    predictions.insert(0, "dataset", machine.dataset)
    return predictions, rules_for_files(predictions["file_name"].tolist(), split_folders)


def write_machine_outputs(machine: MachineData, folder: RunFolder, predictions: pd.DataFrame, rules: str) -> None:
    """Official submission files, result.csv and plots of one machine type."""
    from asd.evaluation.metrics import is_measurable
    from asd.evaluation.submission import write_machine_result, write_submission_files
    from asd.reports.plots import plot_roc, plot_score_histograms

    dataset, name = machine.dataset, machine.machine
    write_submission_files(predictions, folder.submission_dir(dataset), rules)
    if is_measurable(predictions):
        write_machine_result(predictions, folder.result_csv(dataset, name), rules)
        plot_roc(predictions, folder.roc_png(dataset, name), title=machine.key)
    plot_score_histograms(predictions, folder.histogram_png(dataset, name))
