#!/usr/bin/env bash
# Run the unfinished results tables in the background, resumable, from frozen copies of the code (so that
# editing the work tree never changes a running job), one core each:
#   core1: the offline sweep table (docs/results/fashion_mnist_sweep.md), then the GAN compression table
#          (fashion_gan_compression.md), then the knowledge table (fashion_mnist_knowledge.md);
#   core2: the segmentation, detection and text tables (fashion_canvas_segmentation.md,
#          fashion_canvas_detection.md, austen_text.md), then issue 32's table (fashion_mnist_beyond.md;
#          its teacher is the offline table's, trained by core1 first).
#     benchmarks/tables_background.sh [core1|core2]   # both chains by default; one restarts only that one
# (The online sweep table, fashion_mnist_schemes_sweep.md, is finished.) Finished runs and trials are
# skipped. The tables are written into the copy's docs/, with each finished method's result files beside
# them (docs/results/<table>/): copy those into the work tree (or rewrite the tables there with
# `--write-only`, on the machine that holds the runs) and commit; a later session on another machine goes
# on from them. Background jobs end with the session.
#   KDKIT_TABLES_COPY (default /work/tables)   the frozen copies (<it>/core1, <it>/core2: clones of HEAD)
#   KDKIT_RUNS        (default /work/kdkit_runs) the runs, outside the work tree
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
COPY=${KDKIT_TABLES_COPY:-/work/tables}
RUNS=${KDKIT_RUNS:-/work/kdkit_runs}
PY="$SRC/.venv/bin/python"
CHAINS=${1:-core1 core2}
declare -A SCRIPTS=([core1]="sweep_tables|gan_table" [core2]="dense_table|beyond_table")
for chain in $CHAINS; do
  [[ -n "${SCRIPTS[$chain]:-}" ]] || { echo "unknown chain '$chain' (core1 or core2)" >&2; exit 2; }
  if pgrep -f "benchmarks/(${SCRIPTS[$chain]}).py" >/dev/null; then
    echo "$chain's table jobs are running already (pgrep -af benchmarks/); stop them first" >&2
    exit 2
  fi
done
# the same arithmetic on every x86 machine (AVX2 and AVX-512 alike): PyTorch's own kernels, oneDNN's and
# MKL's pinned to their AVX2 code paths, so that a teacher trained again on another machine has the same
# weights and the finished methods kept beside a table carry over (kdkit.sweep.compare.fingerprint)
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2
mkdir -p "$RUNS/sweep_tables" "$RUNS/segmentation" "$RUNS/detection" "$RUNS/text" "$RUNS/gan" "$RUNS/beyond"
for chain in $CHAINS; do
  rm -rf "${COPY:?}/$chain" && git clone -q "$SRC" "$COPY/$chain"
  cd "$COPY/$chain"
  export PYTHONPATH="$COPY/$chain"
  if [[ $chain == core1 ]]; then
    nohup bash -c "'$PY' benchmarks/sweep_tables.py --table offline --out '$RUNS/sweep_tables' \
      >> '$RUNS/sweep_tables/offline.log' 2>&1; '$PY' benchmarks/gan_table.py --threads 1 --out '$RUNS/gan' \
      >> '$RUNS/gan/table.log' 2>&1; '$PY' benchmarks/sweep_tables.py --table knowledge \
      --out '$RUNS/sweep_tables' >> '$RUNS/sweep_tables/knowledge.log' 2>&1" > /dev/null 2>&1 &
  else
    nohup bash -c "'$PY' benchmarks/dense_table.py --task segmentation --threads 1 \
      --out '$RUNS/segmentation' >> '$RUNS/segmentation/table.log' 2>&1; '$PY' benchmarks/dense_table.py \
      --task detection --threads 1 --out '$RUNS/detection' >> '$RUNS/detection/table.log' 2>&1; '$PY' \
      benchmarks/dense_table.py --task text --threads 1 --out '$RUNS/text' >> '$RUNS/text/table.log' 2>&1; '$PY' \
      benchmarks/beyond_table.py --out '$RUNS/beyond' --teacher-dir '$RUNS/sweep_tables/teacher' \
      >> '$RUNS/beyond/table.log' 2>&1" \
      > /dev/null 2>&1 &
  fi
  echo "$chain started from $COPY/$chain (HEAD $(git rev-parse --short HEAD)); logs in $RUNS"
done
