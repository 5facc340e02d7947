#!/usr/bin/env bash
# GPU check for inference (issue: evaluation/inference). 256x256 -> 1024x1024, paper-size EDSR, fp32 and bf16,
# untiled and tiled. Target: >= 100 output MP/s in bf16 on an H100 (a plain implementation: 36.6 fp32, 67.1 bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH=.
timeout 240 python -m ots bench infer --size 256 --n-blocks 64 --n-features 128 --tile 0 --repeats 10 --warmup 3 \
  --precisions fp32,bf16 | tee "$OUT_DIR/infer_256_untiled.json"
timeout 240 python -m ots bench infer --size 256 --n-blocks 64 --n-features 128 --tile 128 --overlap 16 \
  --batch-tiles 4 --repeats 10 --warmup 3 --precisions fp32,bf16 | tee "$OUT_DIR/infer_256_tiled.json"
