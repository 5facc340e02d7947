#!/usr/bin/env bash
# The stability study (docs/stability.md): every setting is one `ots fit` run (one process, no Ray/MLflow) from
# bench/stability/base.yaml plus its overrides; curves (val SWD / PSNR vs step, bicubic as a line) and grids land in
# $OUT/<dataset>/<setting>/, a combined figure per data set in $OUT/<dataset>.png.
#   bash bench/stability/run.sh                 # all settings on the demo set, then the real-photo set
#   bash bench/stability/run.sh demo noise      # one setting on one set
# Data: the demo shards (`ots data prepare` -> data/demo) and the real-photo set (`make photoset`, then
# `ots data prepare --source data/photoset_src --out data/photoset`). 1 thread per run: two runs fit 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-bench/stability/out}"
OTS="${OTS:-.venv/bin/python -m ots}"
declare -A SETTINGS=(
  [as_shipped]=""
  [margin_ema]="--set solver.margin=2 --set solver.ema=0.99"
  [noise]="--set solver.margin=2 --set solver.ema=0.99 --set solver.noise=0.1"
  [grad_icnr]='--set solver.margin=2 --set solver.ema=0.99 --set solver.cost={"mse":10,"grad":10} --set model.map.icnr=true'
  [kaiming]="--set solver.margin=2 --set solver.ema=0.99 --set model.potential.init=kaiming"
  [mse1]='--set solver.margin=2 --set solver.ema=0.99 --set solver.cost={"mse":1}'
  [mse1_lr1e4]='--set solver.margin=2 --set solver.ema=0.99 --set solver.cost={"mse":1} --set solver.lr_map=1e-4 --set solver.lr_potential=1e-4'
  [fast_potential]='--set solver.margin=2 --set solver.ema=0.99 --set solver.cost={"mse":1} --set solver.lr_map=1e-4 --set solver.lr_potential=1e-3 --set solver.k_T=2'
  [long_noise]='--steps 1000 --eval-every 50 --set solver.margin=2 --set solver.ema=0.999 --set solver.noise=0.1 --set solver.cost={"mse":1} --set solver.lr_map=5e-5 --set solver.lr_potential=5e-4 --set solver.k_T=1'
)
declare -A DATA=([demo]=data/demo [photoset]=data/photoset)
sets="${1:-demo photoset}"
names="${2:-${!SETTINGS[*]}}"
for ds in $sets; do
  for name in $names; do
    mkdir -p "$OUT/$ds"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 $OTS fit --params bench/stability/base.yaml --dataset "${DATA[$ds]}" --out "$OUT/$ds/$name" \
      ${SETTINGS[$name]} | tail -n 1
  done
  $OTS curves "$OUT/$ds"/*/ --out "$OUT/$ds.png" --title "stability study, $ds set" > "$OUT/$ds.json"
done
