#!/usr/bin/env bash
# The test suite: sets up .venv if needed, checks style, runs pytest (extra arguments go to pytest;
# --runslow adds the long runs).
set -euo pipefail
cd "$(dirname "$0")"
scripts/venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
