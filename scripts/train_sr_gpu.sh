#!/usr/bin/env bash
# Train the two super-resolution stages side by side on one GPU, then export each run's EMA weights.
# This is the script that made data/checkpoints/sr256.* and sr1024.* (on a lent H100; see their cards).
#
#   ENCODER   the text encoder (default minilm; the GPU machine used an fp32-computing copy of the same
#             all-MiniLM-L6-v2 weights stored in fp16, as the package itself could not travel there)
#   LIMIT     seconds of training per stage (both run at once); rerunning continues each run
#   DEVICE    cuda (default) or cpu;  RUNS  where the runs go;  DEST  where the exports go
set -euo pipefail
ENCODER=${ENCODER:-minilm}
LIMIT=${LIMIT:-420}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs}
DEST=${DEST:-data/checkpoints}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
common=(--device "$DEVICE" --encoder "$ENCODER" --seed 0 --steps 100000 --time-limit "$LIMIT" --sample-every 0
        --checkpoint-every 2000 --threads 2 --quiet)
"$PY" -m minimagen.cli train --stage sr256 --unet sr-s --out "$RUNS/sr256" --batch-size 32 --lr 4e-4 --workers 6 \
    "${common[@]}" > "$DEST/sr256.log" 2>&1 &
"$PY" -m minimagen.cli train --stage sr1024 --unet sr-xs --out "$RUNS/sr1024" --batch-size 16 --lr 4e-4 --workers 8 \
    "${common[@]}" > "$DEST/sr1024.log" 2>&1 &
wait
hw=${HARDWARE:-"$($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")')"}
for stage in sr256 sr1024; do
    "$PY" -m minimagen.cli export "$RUNS/$stage" "$DEST/$stage.safetensors" --hardware "$hw" || echo "export $stage failed"
    "$PY" -c "import json,sys; t=json.load(open(sys.argv[1]))['training']; print(sys.argv[2], 'steps', t['steps'], 'in', t['wall_time_s'], 's, final loss', t['final_loss'])" "$DEST/$stage.json" "$stage" || true
done
