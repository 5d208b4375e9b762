#!/usr/bin/env bash
# Run the unfinished results tables in the background, resumable, from a frozen copy of the code (so that
# editing the work tree never changes a running job), one core each:
#   core 1: the GAN compression table (fashion_gan_compression.md), then the offline sweep table
#           (docs/results/fashion_mnist_sweep.md);
#   core 2: the online sweep table (fashion_mnist_schemes_sweep.md), then the segmentation, detection and
#           text tables (fashion_canvas_segmentation.md, fashion_canvas_detection.md, austen_text.md).
# Finished runs and trials are skipped. The tables are written into the copy's docs/; rewrite them in the
# work tree with `--write-only` (each script) and commit. Background jobs end with the session.
#   KDKIT_TABLES_COPY (default /work/tables)   the frozen copy (a clone of this repository's HEAD)
#   KDKIT_RUNS        (default /work/kdkit_runs) the runs, outside the work tree
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
COPY=${KDKIT_TABLES_COPY:-/work/tables}
RUNS=${KDKIT_RUNS:-/work/kdkit_runs}
PY="$SRC/.venv/bin/python"
if pgrep -f "benchmarks/(sweep_tables|segmentation_table|dense_table|gan_table).py" >/dev/null; then
  echo "table jobs are running already (pgrep -af benchmarks/); stop them first" >&2
  exit 2
fi
rm -rf "$COPY" && git clone -q "$SRC" "$COPY"
mkdir -p "$RUNS/sweep_tables" "$RUNS/segmentation" "$RUNS/detection" "$RUNS/text" "$RUNS/gan"
cd "$COPY"
export PYTHONPATH="$COPY"
nohup bash -c "'$PY' benchmarks/gan_table.py --threads 1 --out '$RUNS/gan' >> '$RUNS/gan/table.log' 2>&1; \
  '$PY' benchmarks/sweep_tables.py --table offline --out '$RUNS/sweep_tables' \
  >> '$RUNS/sweep_tables/offline.log' 2>&1" > /dev/null 2>&1 &
nohup bash -c "'$PY' benchmarks/sweep_tables.py --table online --out '$RUNS/sweep_tables' \
  >> '$RUNS/sweep_tables/online.log' 2>&1; '$PY' benchmarks/dense_table.py --task segmentation --threads 1 \
  --out '$RUNS/segmentation' >> '$RUNS/segmentation/table.log' 2>&1; '$PY' benchmarks/dense_table.py \
  --task detection --threads 1 --out '$RUNS/detection' >> '$RUNS/detection/table.log' 2>&1; '$PY' \
  benchmarks/dense_table.py --task text --threads 1 --out '$RUNS/text' >> '$RUNS/text/table.log' 2>&1" \
  > /dev/null 2>&1 &
echo "started from $COPY (HEAD $(git rev-parse --short HEAD)); logs in $RUNS"
