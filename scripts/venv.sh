#!/usr/bin/env bash
# Creates ./.venv and installs the pinned requirements, once; again only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
PY=${PYTHON:-python3}
echo "setting up .venv with $($PY --version) (pinned requirements.txt)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
echo "$want" > "$stamp"
