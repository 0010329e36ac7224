#!/usr/bin/env bash
# Measure the sampler-step speed suite on one lent CUDA GPU in a few minutes (a bare machine:
# nothing kept), writing benchmarks/step.json, BENCHMARKS.md and the log to $OUT.
#   usage (device tool): bash scripts/speed_gpu.sh [only-regex]
#   only-regex: the cells to run (default: n = 1024 and 8192 at every d, and the sampler runs)
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
only="${1:-^step d=.* n=(1024|8192)$|^step sampler}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -c "import torch, safetensors, tqdm, diffusers; assert torch.cuda.is_available(), 'no CUDA device'" \
  || python3 -m pip install -q safetensors tqdm diffusers matplotlib
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m disco_score.bench step --device cuda --only "$only" --timeout 120 --no-progress --out-dir "$OUT" \
  2>&1 | tee "$OUT/speed.log"
