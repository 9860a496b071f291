#!/usr/bin/env bash
# Create (or reuse) .venv and install pal into it. Usage: tools/venv.sh [dev]
# Safe to run twice: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[pal] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
stamp=".venv/.pal-installed${extra:+-dev}"
want="$(cat settings.ini setup.py pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[pal] .venv is up to date (${extra:-runtime})"
  exit 0
fi
echo "[pal] installing pal${extra} into .venv (first time: a few minutes, torch is large)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extra}"
echo "$want" > "$stamp"
