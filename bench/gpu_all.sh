#!/usr/bin/env bash
# The whole GPU check of issue 9 in one prepared script: <= 8 minutes wall time on one H100/H200, from the bare
# source tree (torch, torchvision, numpy, scipy, pyarrow, scikit-image, tqdm; no ray/mlflow/dvc/lpips).
#
#   bash bench/gpu_all.sh                       # on the GPU machine; JSON per part under $OUT (default bench/out)
#   bash bench/gpu_all.sh --smoke               # every part at toy sizes on the CPU (tests/test_bench.py runs it)
#   bash bench/gpu_all.sh --parts 2c,3c         # only some parts, e.g. a rerun after a fix
#
# Parts, in the order they run (cheap and certain first, compilation last; each under `timeout`, a failing part
# is recorded in $OUT/parts.tsv and the next one runs):
#   env  nvidia-smi, torch/CUDA/cuDNN versions                      -> env.json
#   1    reference vs fast loop, paper config, batch 8, fp32        -> train_b8_fp32.json
#   2    fast loop, batch 32, bf16, eager, + profiler top kernels  -> train_b32_bf16.json (+ .profile.txt)
#   3    inference 256->1024 and 1024->4096, untiled/tiled, fp32/bf16 -> infer.json
#   4    demo dataset + a ~3-minute training run (`ots fit`)        -> fit/curve.json, curve.png, grid.png
#   2c   part 2 compiled: CUDA graphs (reduce-overhead; default if they fail) -> train_b32_bf16_compiled.json
#   3c   part 3 compiled, bf16                                       -> infer_compiled.json
# Then `ots bench report` prints the summary (and writes summary.md, summary.json).
set -uo pipefail  # not -e: a part that fails or times out must not stop the others
cd "$(dirname "$0")/.."

OUT="${OUT:-bench/out}"            # relative paths are relative to the repository root
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PARTS="env,1,2,3,4,2c,3c"
SMOKE=""                           # "--smoke" or empty: appended unquoted to the commands
BUDGET="${BUDGET_S:-}"             # seconds for all parts (default 470; the limit is 480)
COMPILE_MODES="${COMPILE_MODES:-reduce-overhead}"  # if CUDA graphs fail, part 2c falls back to mode default
FIT_PARAMS="${FIT_PARAMS:-configs/gpu-study.yaml}"
FIT_DATA="${FIT_DATA:-/tmp/ots-demo}"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE="--smoke" ;;
    --parts) PARTS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu_all.sh: unknown argument $1 (use --smoke, --parts LIST, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
# On a CPU (--smoke) the toy parts are quick but Python start-up on a busy machine is not: 3x the limits.
SCALE=1; [ -n "$SMOKE" ] && SCALE=3
BUDGET="${BUDGET:-$(( 470 * SCALE ))}"
mkdir -p "$OUT"
START=$SECONDS

if [ -z "$SMOKE" ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_all.sh: no CUDA device here; use --smoke to check the script on a CPU" >&2
  exit 2
fi
printf 'part\trc\tseconds\ttimeout_s\n' > "$OUT/parts.tsv"

wanted() { [[ ",$PARTS," == *",$1,"* ]]; }
left() { echo $(( BUDGET - (SECONDS - START) )); }

# run NAME CAP_S COMMAND...: the command under `timeout min(CAP_S, time left)`, output in $OUT/NAME.log.
run() {
  local name="$1" cap=$(( $2 * SCALE )) t rc t0; shift 2
  t=$(left); [ "$cap" -lt "$t" ] && t=$cap
  if [ "$t" -lt 10 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$t" >> "$OUT/parts.tsv"
    echo "== part $name: skipped, ${t}s left of ${BUDGET}s"
    return 0
  fi
  echo "== part $name (timeout ${t}s, $(( SECONDS - START ))s elapsed): $*"
  t0=$SECONDS
  timeout --kill-after=10 "$t" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" "$t" >> "$OUT/parts.tsv"
  if [ "$rc" -eq 0 ]; then
    echo "   ok in $(( SECONDS - t0 ))s"
  else
    echo "   FAILED rc=$rc in $(( SECONDS - t0 ))s$(case $rc in 124|137) echo ' (timeout)';; esac); last lines of $OUT/$name.log:"
    tail -n 5 "$OUT/$name.log" | sed 's/^/   | /'
  fi
  return 0
}

OTS=("$PY" -m ots)
PAPER=(--blocks 64 --features 128 --hr-crop 128 --k-T 15)
MAP=(--n-blocks 64 --n-features 128)

wanted env && run env 30 "${OTS[@]}" bench env --out "$OUT/env.json"

wanted 1 && run 1 90 "${OTS[@]}" bench train "${PAPER[@]}" --batch 8 --loop both --steps 5 --warmup 1 \
  --out "$OUT/train_b8_fp32.json" $SMOKE

wanted 2 && run 2 75 "${OTS[@]}" bench train "${PAPER[@]}" --batch 32 --bf16 --loop fast --compile-modes eager \
  --steps 5 --warmup 2 --profile-steps 1 --out "$OUT/train_b32_bf16.json" $SMOKE

# Tiles are LR px (ots/infer.py); a tile not smaller than the input is the untiled run, so 256 px input gets
# tile 128 and the >= 256 px tiles are measured on a 1024 px input (1024 -> 4096, 16.8 output MP).
wanted 3 && run 3 90 "${OTS[@]}" bench infer "${MAP[@]}" --sizes 256,1024 --tiles 0,128,256,512 --overlap 32 \
  --precisions fp32,bf16 --repeats 5 --warmup 1 --out "$OUT/infer.json" $SMOKE

if wanted 4; then
  if [ -z "$SMOKE" ]; then FIT_DEVICE=cuda; FIT_BUDGET=180; else FIT_DEVICE=cpu; FIT_BUDGET=10; fi
  run 4data 60 "${OTS[@]}" data prepare --source demo --out "$FIT_DATA" --work "$FIT_DATA-src"
  # The run needs ~40 s beyond its budget (start, final validation, plots); shorten it if earlier parts ran late.
  room=$(( $(left) - 40 - 90 ))  # keep ~90 s for parts 2c/3c
  [ "$room" -lt "$FIT_BUDGET" ] && FIT_BUDGET=$room
  cap=$(( FIT_BUDGET + 40 )); [ "$FIT_BUDGET" -lt 5 ] && cap=0  # (--time-budget 0 would mean "no limit")
  run 4 "$cap" "${OTS[@]}" fit --params "$FIT_PARAMS" --dataset "$FIT_DATA" --out "$OUT/fit" \
    --time-budget "$FIT_BUDGET" --device "$FIT_DEVICE"
fi

# Compilation last: the slowest and least certain parts get what is left (3c keeps ~60 s).
wanted 2c && run 2c $(( $(left) - 60 )) "${OTS[@]}" bench train "${PAPER[@]}" --batch 32 --bf16 --loop fast \
  --compile-modes "$COMPILE_MODES" --compile-fallback default --steps 5 --warmup 3 --profile-steps 1 \
  --out "$OUT/train_b32_bf16_compiled.json" $SMOKE

wanted 3c && run 3c 240 "${OTS[@]}" bench infer "${MAP[@]}" --sizes 256,1024 --tiles 0,512 --overlap 32 \
  --precisions bf16 --compile-modes default --repeats 5 --warmup 2 --out "$OUT/infer_compiled.json" $SMOKE

echo "== done in $(( SECONDS - START ))s"
timeout 60 "${OTS[@]}" bench report "$OUT"
