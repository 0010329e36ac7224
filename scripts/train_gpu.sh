#!/usr/bin/env bash
# Fine-tune DiScoFormer on one lent CUDA GPU for at most 7 minutes of training, from the newest
# checkpoint, writing the checkpoint, its log and history to $OUT (a bare machine: nothing kept).
#   usage (device tool): bash scripts/train_gpu.sh [config] [init]
#   config: a TrainConfig JSON (default configs/finetune_wide.json)
#   init:   weights to start from (default: the packaged general network, or $OUT/run/ckpt.pt if
#           a carried runs/ checkpoint was copied there first)
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
config="${1:-configs/finetune_wide.json}"
init="${2:-disco_score/weights/discoformer.safetensors}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, safetensors, tqdm; assert torch.cuda.is_available(), 'no CUDA device'" \
  || python3 -m pip install -q safetensors tqdm
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
mkdir -p "$OUT/run"
# larger batches than on 2 CPU cores: the step count is what 7 minutes buy
python3 -m disco_score.train --config "$config" --out-dir "$OUT/run" --device cuda --max-minutes 7 \
  --init-from "$init" --quiet 2>&1 | tee "$OUT/train.log"
rm -f "$OUT/run/best.pt"  # the files that come back are few: keep ckpt.pt, config and history
