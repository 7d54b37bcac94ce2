#!/usr/bin/env bash
# Issue 15 / lesson 12: the base models of the encoder comparison. Each run is one 32 px base model (base-s,
# predicting v) trained on Shapes without the held-out colour-shape pairs, differing only in --encoder and
# --seed: 4,000 steps of batch 16 (~20 min on one CPU core). Runs in turn, each resumable: run this script
# again and every finished run (its last checkpoint or its export RUNS_DIR/ENCODER-sSEED.safetensors) is skipped,
# an interrupted one resumes from its newest checkpoint.
#   bash scripts/train_encoders.sh [RUNS_DIR] [SEEDS...]      default: runs/enc, seeds 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/enc}
shift || true
seeds=${*:-0 1 2}
for seed in $seeds; do
  for encoder in minilm minilm-random bow transformer; do
    run="$out/$encoder-s$seed"
    # finished: its last checkpoint, or its export (minimagen export RUN RUN.safetensors) is there
    if [ -f "$run/step_00004000.safetensors" ] || [ -f "$run.safetensors" ]; then continue; fi
    .venv/bin/minimagen train --out "$run" --image-size 32 --max-length 40 --encoder "$encoder" \
      --hold-out-colour-shapes --prediction v --steps 4000 --lr 4e-4 --lr-decay-steps 1000 --batch-size 16 \
      --seed "$seed" --threads "${THREADS:-1}" --sample-every 0 --checkpoint-every 500 --quiet
  done
done
