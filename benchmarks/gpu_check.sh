#!/usr/bin/env bash
# The first thing to run on a lent GPU (H100/H200), in one call of about 5 minutes:
#   1. kdkit bench, KD resnet32x4 -> resnet8x4 on CIFAR-100-shaped (synthetic) data, batch 64 and 512,
#      kdkit loop against the reference DataLoader loop, eager and compiled;
#   2. a short real-data accuracy check: KD cnn_medium -> cnn_tiny on Fashion-MNIST, kdkit's on-device
#      pipeline against its reference DataLoader pipeline (same recipe, 2 seeds).
# Every result is JSON (and Markdown) under $GPU_CHECK_DOCS (default docs/results), named gpu_check-*;
# the log of each step is printed.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh # CPU smoke test with tiny settings (tests/test_gpu_check.py)
#
# Settings (environment): GPU_CHECK_DOCS, GPU_CHECK_RUNS (run directories, default runs/gpu_check),
# GPU_CHECK_COMPILE (torch.compile mode of the compiled bench, default reduce-overhead; none skips it),
# GPU_CHECK_EPOCHS (Fashion-MNIST epochs, default 3), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DOCS=${GPU_CHECK_DOCS:-docs/results}
RUNS=${GPU_CHECK_RUNS:-runs/gpu_check}
COMPILE=${GPU_CHECK_COMPILE:-reduce-overhead}
EPOCHS=${GPU_CHECK_EPOCHS:-3}
SEEDS=2
BENCH=(--steps 50 --warmup 10 --repeats 3 --workers 8)
TEACHER=resnet32x4 STUDENT=resnet8x4 DATASET=cifar100
DATA_SET=() TEACHER_SET=() KD_SET=()
if [ -n "${GPU_CHECK_TINY:-}" ]; then  # CPU: a few steps of the smallest models, one short epoch
  BENCH=(--steps 2 --warmup 1 --repeats 1 --workers 1)
  TEACHER=cnn_small STUDENT=cnn_tiny DATASET=digits
  EPOCHS=1 SEEDS=1
  DATA_SET=(--set data.name=digits --set data.batch_size=64)
  TEACHER_SET=(--set model=cnn_small) KD_SET=(--set teacher.name=cnn_small)
fi
mkdir -p "$DOCS" "$RUNS"
"$PY" -c "import torch, kdkit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'kdkit', kdkit.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

step() { echo; echo "== $*"; }
MODES=(none)
[ "$COMPILE" != none ] && MODES+=("$COMPILE")
for b in 64 512; do
  [ -n "${GPU_CHECK_TINY:-}" ] && bs=$((b / 32)) || bs=$b
  for mode in "${MODES[@]}"; do
    [ "$mode" = none ] && name=eager || name=$mode
    step "bench b$b $name"
    "$PY" -m kdkit bench --teacher $TEACHER --student $STUDENT --method kd --dataset $DATASET --batch-size "$bs" \
      --reference "${BENCH[@]}" --compile "$mode" --out "$DOCS/gpu_check-bench-b$b-$name.json"
  done
done

step "Fashion-MNIST teacher ($EPOCHS epochs)"
"$PY" -m kdkit train configs/fashion_mnist/teacher.yaml "${DATA_SET[@]}" "${TEACHER_SET[@]}" \
  --set train.epochs="$EPOCHS" \
  --set train.progress=false --out "$RUNS/teacher" | tail -1
step "Fashion-MNIST KD: on-device pipeline vs reference DataLoader pipeline ($SEEDS seeds)"
"$PY" benchmarks/recipe_compare.py --out gpu_check-fashion_mnist --seeds $SEEDS --runs "$RUNS" --docs "$DOCS" \
  --set teacher.checkpoint="$RUNS/teacher/checkpoint.pt" --set train.epochs="$EPOCHS" \
  "${DATA_SET[@]}" "${KD_SET[@]}" \
  memory=configs/fashion_mnist/kd.yaml dataloader=configs/fashion_mnist/kd.yaml,data.pipeline=dataloader,data.num_workers=4
echo; echo "gpu_check: done; results in $DOCS/gpu_check-*"
