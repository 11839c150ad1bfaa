#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its test tools into it.
# Needs only Python >= 3.10 on PATH. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[install] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.asd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[install] installing the project and its dependencies into .venv (first time: about 2 minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    touch "$stamp"
fi
echo "[install] ready: $(.venv/bin/python -c 'import torch, torchaudio, asd; print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, asd {asd.__version__}")')"
