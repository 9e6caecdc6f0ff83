#!/usr/bin/env bash
# The test suite: sets up .venv if needed, checks style, runs pytest on every core, 4 workers at most
# (each holds torch and starts encoders: ~0.6 GB). Extra arguments go to pytest and come last, so
# -n 0 runs it in one process; --runslow adds the long runs.
set -euo pipefail
cd "$(dirname "$0")"
scripts/venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 "$@"
