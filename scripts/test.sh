#!/usr/bin/env bash
# Sets everything up (.venv) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check source tests bench
.venv/bin/python -m pytest "$@"
