#!/usr/bin/env bash
# The main job: set up .venv and run a short PAL pretraining on data_samples/ (tiny backbone, CPU).
# Writes runs/demo/{checkpoint.pt,config.json,log.csv,loss.png,sample.png}; a second run starts the
# demo afresh (--overwrite). Extra arguments go to pal-pretrain, e.g. `make demo ARGS="--steps 300"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/venv.sh
.venv/bin/pal-pretrain --videos data_samples --out runs/demo --backbone tiny --device cpu --overwrite "$@"
