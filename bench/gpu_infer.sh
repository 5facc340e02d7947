#!/usr/bin/env bash
# Inference part of the GPU check (kept for old links): environment, parts 3 and 3c of bench/gpu_all.sh.
exec bash "$(dirname "$0")/gpu_all.sh" --parts env,3,3c "$@"
