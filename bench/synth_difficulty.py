"""Calibrate the difficulty of the synthetic dataset with a simple detector.

Generates a dataset (full scale by default) into a temporary folder, then per machine type:
log-mel features (128 mels, n_fft 1024, hop 512, power 2, 10*log10), mean and std over time per clip,
standardised with training statistics; anomaly score = distance to the nearest normal training clip
(source and target training clips together, as in DCASE's k-NN baselines). Prints AUC(source)
(source normals vs all anomalies), AUC(target) (target normals vs all anomalies), pAUC (max_fpr=0.1,
all test clips) and, for calibration, the AUC of each anomaly kind against all test normals.

Usage::

    python bench/synth_difficulty.py [--scale 1.0] [--seed 0] [--anomaly-strength 1.0] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from sklearn.metrics import roc_auc_score

from asd.dataset.synth import MACHINE_TYPES, generate_dataset


def logmel_stats(paths: list[Path], sr: int, batch: int = 128) -> np.ndarray:
    """Mean and std over time of the log-mel spectrogram of each clip (left channel if stereo)."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0
    )
    feats = []
    for i in range(0, len(paths), batch):
        waves = []
        for p in paths[i : i + batch]:
            x, _ = sf.read(p, dtype="float32", always_2d=True)
            waves.append(x[:, 0])
        with torch.no_grad():
            spec = 10.0 * torch.log10(mel(torch.from_numpy(np.stack(waves))) + 1e-10)
        feats.append(torch.cat([spec.mean(-1), spec.std(-1)], dim=1).numpy())
    return np.concatenate(feats)


def knn_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest training clip after standardising with training statistics."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    a, b = (train - mu) / sd, (test - mu) / sd
    d2 = (b**2).sum(1)[:, None] + (a**2).sum(1)[None, :] - 2.0 * b @ a.T
    return np.sqrt(np.maximum(d2, 0.0)).min(1)


def evaluate(root: Path, manifest: pd.DataFrame, sr: int) -> pd.DataFrame:
    rows = []
    for machine, df in manifest.groupby("machine", sort=False):
        feats = logmel_stats([root / p for p in df["path"]], sr)
        is_train = (df["split"] == "train").to_numpy()
        test = df[~is_train].reset_index(drop=True)
        scores = knn_scores(feats[is_train], feats[~is_train])
        y = (test["label"] == "anomaly").to_numpy().astype(int)
        row = {"machine": machine}
        for domain in ("source", "target"):
            keep = (test["domain"] == domain).to_numpy() | (y == 1)
            row[f"AUC_{domain}"] = roc_auc_score(y[keep], scores[keep])
        row["pAUC"] = roc_auc_score(y, scores, max_fpr=0.1)
        normals = y == 0
        for kind in sorted(k for k in test["anomaly_kind"].unique() if k):
            keep = normals | (test["anomaly_kind"] == kind).to_numpy()
            row[f"kind:{kind}"] = roc_auc_score(y[keep], scores[keep])
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anomaly-strength", type=float, default=1.0)
    ap.add_argument("--machines", nargs="*", default=list(MACHINE_TYPES))
    ap.add_argument("--n-jobs", type=int, default=-1)
    ap.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="asd_synth_") as tmp:
        root = args.out or Path(tmp)
        t0 = time.perf_counter()
        manifest = generate_dataset(
            root, seed=args.seed, scale=args.scale, machines=args.machines,
            anomaly_strength=args.anomaly_strength, n_jobs=args.n_jobs,
        )
        gen_s = time.perf_counter() - t0
        print(f"generated {len(manifest)} clips ({len(args.machines)} machine types, scale {args.scale}) "
              f"in {gen_s:.1f} s")
        t0 = time.perf_counter()
        table = evaluate(root, manifest, 16000)
        print(f"features + k-NN detector in {time.perf_counter() - t0:.1f} s\n")
    main_cols = ["machine", "AUC_source", "AUC_target", "pAUC"]
    print(table[main_cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    flat = table[main_cols[1:]].to_numpy().ravel()
    print(f"\nharmonic mean (official-score style): {len(flat) / np.sum(1.0 / flat):.3f}")
    print("\nAUC per anomaly kind (all test normals vs that kind):")
    for _, row in table.iterrows():
        kinds = {k[5:]: v for k, v in row.items() if k.startswith("kind:") and pd.notna(v)}
        print(f"  {row['machine']:<8} " + "  ".join(f"{k}={v:.3f}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
