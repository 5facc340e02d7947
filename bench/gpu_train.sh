#!/usr/bin/env bash
# GPU check for the training step (issue: core). One prepared script, <= 6 minutes with compilation.
# Paper config: EDSR 64 blocks x 128 features, ResNet critic for 128-px crops, batch 8, k_T 15.
# Runs from a bare source tree: PYTHONPATH=. python -m ots ... (no ray/mlflow needed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
PAPER=(--blocks 64 --features 128 --hr-crop 128 --k-T 15)
# 1) reference vs fast loop, fp32, batch 8 (one run: the ratio is measured in one process)
timeout 150 python -m ots bench train "${PAPER[@]}" --batch 8 --steps 4 --warmup 1 --loop both \
  --out "$OUT_DIR/train_b8_fp32.json"
# 2) fast loop, bf16, batch 32
timeout 90 python -m ots bench train "${PAPER[@]}" --batch 32 --steps 3 --warmup 1 --loop fast --bf16 \
  --out "$OUT_DIR/train_b32_bf16.json"
# 3) fast loop, bf16, batch 32, torch.compile (compilation counted in warmup_seconds, not in the timing)
timeout 150 python -m ots bench train "${PAPER[@]}" --batch 32 --steps 3 --warmup 2 --loop fast --bf16 --compile \
  --out "$OUT_DIR/train_b32_bf16_compile.json" || echo "compile run did not finish in time"
python - "$OUT_DIR" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
for f in sorted(d.glob("train_*.json")):
    r = json.loads(f.read_text())
    for loop in ("reference", "fast"):
        if loop in r:
            x = r[loop]
            print(f"{f.stem:28s} {loop:9s} batch {x['batch']:3d} {x['map_steps_per_s']:7.1f} map steps/s "
                  f"{x['hr_crops_per_s']:8.1f} HR crops/s  peak {x['peak_memory_mb']:.0f} MB")
    if "speedup_hr_crops_per_s" in r:
        print(f"  speedup fast/reference: {r['speedup_hr_crops_per_s']:.2f}x  ({r['device']})")
PY
