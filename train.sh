#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs main.py with your arguments
# (no arguments: 2 epochs on the bundled clips with the built-in SVT-AV1 encoder).
set -euo pipefail
cd "$(dirname "$0")"
scripts/venv.sh
exec .venv/bin/python main.py "$@"
