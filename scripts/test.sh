#!/usr/bin/env bash
# Sets everything up (.venv) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The browser tests of the HTML pages drive Chromium through chromedriver (Debian packages; browsers
# downloaded from the web are not used). Installed here when missing and we are root on Debian; never
# fatal: without them those tests skip and say why.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
        echo "[test] installing chromium and chromium-driver (apt) for the browser tests"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
               && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }; then
            echo "[test] apt-get could not install chromium / chromium-driver; the browser tests will skip"
        fi
    else
        echo "[test] no chromium / chromedriver, and not root on Debian: the browser tests will skip"
    fi
fi
.venv/bin/ruff check source tests bench
.venv/bin/python -m pytest "$@"
