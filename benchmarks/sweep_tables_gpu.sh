#!/usr/bin/env bash
# The two sweep tables of issue 26 on a lent GPU (H100/H200), after benchmarks/gpu_check.sh: the same
# commands as on the CPU (benchmarks/sweep_tables.py), every run on CUDA, several sweep workers sharing
# the GPU. Resumable like the CPU tables: run it again and finished trials and runs are kept.
#
#   bash benchmarks/sweep_tables_gpu.sh                 # both tables
#   bash benchmarks/sweep_tables_gpu.sh --trials 4      # extra flags go to both tables
#
# Settings (environment): SWEEP_GPU_OUT (runs, default runs/sweep_tables_gpu), SWEEP_GPU_DOCS (tables and
# a copy of docs/methods.md with the tuned weights, default docs/results/gpu), SWEEP_GPU_WORKERS (default
# 4), SWEEP_GPU_CHECK (0 skips gpu_check.sh), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${SWEEP_GPU_OUT:-runs/sweep_tables_gpu}
DOCS=${SWEEP_GPU_DOCS:-docs/results/gpu}
WORKERS=${SWEEP_GPU_WORKERS:-4}
if [ "${SWEEP_GPU_CHECK:-1}" != 0 ]; then
  bash benchmarks/gpu_check.sh
fi
mkdir -p "$DOCS"
[ -f "$DOCS/methods.md" ] || cp docs/methods.md "$DOCS/methods.md"
for table in offline online; do
  echo "== sweep table: $table" >&2
  "$PY" benchmarks/sweep_tables.py --table "$table" --device cuda --workers "$WORKERS" --threads 4 \
    --out "$OUT" --docs "$DOCS" --methods-doc "$DOCS/methods.md" "$@"
done
