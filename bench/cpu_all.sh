#!/usr/bin/env bash
# The CPU numbers in bench/RESULTS.md (2-core VM). JSON goes to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
mkdir -p bench/out
"$BIN/ots" bench train --blocks 8 --features 64 --batch 4 --hr-crop 64 --k-T 15 --steps 2 --warmup 1 \
  --out bench/out/train_cpu_small.json
"$BIN/ots" bench data --out bench/out/data_cpu.json
"$BIN/ots" bench infer --size 128 --n-blocks 8 --n-features 64 --tile 64 --overlap 16 > bench/out/infer_cpu.json
