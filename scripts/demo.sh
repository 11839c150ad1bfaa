#!/usr/bin/env bash
# Sets everything up (.venv) and runs the main job on the built-in synthetic dataset:
# synthetic DCASE-like data -> data_prep (HDF5 shards) -> explore page -> train + test -> official files,
# metrics and the run's report.html.
# Environment: DEMO_SCALE (default 0.2 of DCASE size), DEMO_EPOCHS (default: the model's own; the
# autoencoders stop early), DEMO_MODEL (default: the
# project's default model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
SCALE="${DEMO_SCALE:-0.2}"
EPOCH_ARGS=()
[ -n "${DEMO_EPOCHS:-}" ] && EPOCH_ARGS=(--epochs "$DEMO_EPOCHS")
MODEL_ARGS=()
[ -n "${DEMO_MODEL:-}" ] && MODEL_ARGS=(--model "$DEMO_MODEL")
RAW=data/raw/synth
if [ ! -f "$RAW/synth_config.json" ]; then
    $PY source/main.py synth --out "$RAW" --scale "$SCALE" --seed 0
fi
$PY source/data_prep.py --raw-dir data/raw --out-dir data/processed
$PY source/main.py inspect data/processed/synth/fan/train.h5 --names 3
$PY source/main.py explore --processed-dir data/processed --out output/explore
$PY source/main.py "${EPOCH_ARGS[@]}" "${MODEL_ARGS[@]}"
echo "pages: output/explore/synth.html (the data) and the run's report.html (printed above); open them in a browser"
