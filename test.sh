#!/usr/bin/env bash
# The test suite: sets up .venv if needed, checks style, runs pytest on every core (extra arguments
# go to pytest and come last, so -n 0 runs it in one process; --runslow adds the long runs).
set -euo pipefail
cd "$(dirname "$0")"
scripts/venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n auto "$@"
