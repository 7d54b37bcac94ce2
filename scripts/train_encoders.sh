#!/usr/bin/env bash
# Issue 15 / lesson 12: the base models of the encoder comparison. Each run is one 32 px base model
# (predicting v) trained on Shapes without the held-out colour-shape pairs, differing only in --encoder,
# --seed and, for the U-Net-size comparison, --unet: 4,000 steps of batch 16 (~20 min on one CPU core for
# base-s). Runs in turn, each resumable: run this script again and every finished run (its last checkpoint or
# its export RUNS_DIR/NAME.safetensors) is skipped, an interrupted one resumes from its newest checkpoint.
#   bash scripts/train_encoders.sh [RUNS_DIR] [SEEDS...]      default: runs/enc, seeds 0 1 2
# Environment: ENCODERS (default "minilm minilm-random bow transformer"), UNET (default base-s; another
# U-Net's runs are named ENCODER-UNET-sSEED, e.g. UNET=base-m ENCODERS=minilm gives minilm-base-m-s0),
# THREADS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/enc}
shift || true
seeds=${*:-0 1 2}
encoders=${ENCODERS:-minilm minilm-random bow transformer}
unet=${UNET:-base-s}
for seed in $seeds; do
  for encoder in $encoders; do
    name=$encoder
    if [ "$unet" != base-s ]; then name="$encoder-$unet"; fi
    run="$out/$name-s$seed"
    # finished: its last checkpoint, or its export (minimagen export RUN RUN.safetensors) is there
    if [ -f "$run/step_00004000.safetensors" ] || [ -f "$run.safetensors" ]; then continue; fi
    .venv/bin/minimagen train --out "$run" --image-size 32 --max-length 40 --encoder "$encoder" --unet "$unet" \
      --hold-out-colour-shapes --prediction v --steps 4000 --lr 4e-4 --lr-decay-steps 1000 --batch-size 16 \
      --seed "$seed" --threads "${THREADS:-1}" --sample-every 0 --checkpoint-every 500 --quiet
  done
done
# Lesson 12's "twice as long" base-m model continues seed 2's run for another 4,000 steps (the same schedule
# again, on new scenes) from its export:
#   minimagen train --out runs/enc/minilm-base-m-s2-more --init runs/enc/minilm-base-m-s2.safetensors \
#     --image-size 32 --max-length 40 --encoder minilm --unet base-m --hold-out-colour-shapes --prediction v \
#     --steps 4000 --lr 4e-4 --lr-decay-steps 1000 --batch-size 16 --seed 12 --threads 1 --sample-every 0 \
#     --checkpoint-every 500 --quiet
