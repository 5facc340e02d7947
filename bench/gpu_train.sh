#!/usr/bin/env bash
# Training-step part of the GPU check (kept for old links): environment, parts 1, 2 and 2c of bench/gpu_all.sh.
exec bash "$(dirname "$0")/gpu_all.sh" --parts env,1,2,2c "$@"
