#!/usr/bin/env bash
# The main job: set up .venv and run a short PAL pretraining on data_samples/ (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/venv.sh
.venv/bin/pal-pretrain --videos data_samples --out runs/demo --backbone tiny --device cpu "$@"
