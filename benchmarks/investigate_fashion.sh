#!/usr/bin/env bash
# Follow-up of docs/results/fashion_mnist.md: methods far below the vanilla student, rerun on seed 0 with
# the table's recipe (first 10,000 training images, 3 epochs, no warm-up, the table's teacher) and one
# hyper-parameter changed, to tell a bug from a setting that does not suit this short recipe.
# Usage: bash benchmarks/investigate_fashion.sh [METHOD ...]   (after benchmarks/results_table.py --name
# fashion_mnist); with method names, only their rows run.
set -euo pipefail
KDKIT=${KDKIT:-.venv/bin/kdkit}
TEACHER=runs/results/fashion_mnist/teacher/checkpoint.pt
OUT=runs/investigate
mkdir -p "$OUT"
common=(--set data.limit_train=10000 --set train.epochs=3 --set schedule.warmup_epochs=0
        --set teacher.checkpoint=$TEACHER --set train.out_dir=$OUT --set train.progress=false)
only=" $* "
run() {  # name recipe overrides...
  local name=$1 recipe=$2; shift 2
  [[ "$only" == "  " || "$only" == *" $recipe "* ]] || return 0
  local top1
  rm -rf "$OUT/$name"
  top1=$("$KDKIT" distill "configs/fashion_mnist/$recipe.yaml" "${common[@]}" --set "train.run_name=$name" "$@" \
         2>/dev/null | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["test/top1"])')
  printf '| %s | %s | %s |\n' "$recipe" "${*:-defaults}" "$top1"
}
echo "| method | change | test top-1 (%) |"
echo "|---|---|---:|"
run kd-default kd
run kd-alpha05 kd --set method.alpha=0.5
run kd-t1 kd --set method.temperature=1.0
run at-beta100 at --set method.beta=100
run nst-beta5 nst --set method.beta=5
run sp-gamma300 sp --set method.gamma=300
run logit_mse-ce1 logit_mse --set method.ce_weight=1.0
# FT's first version summed |d| over the 7x7x16 = 3,136 factor elements instead of averaging; its beta b
# is the current loss's beta 3136*b, so these rows replay that version at b = 200, 20, 1, 0.01.
run ft-default ft
run ft-norm200 ft --set method.beta=627200
run ft-norm20 ft --set method.beta=62720
run ft-norm1 ft --set method.beta=3136
run ft-norm001 ft --set method.beta=31.36
run dkd-beta1 dkd --set method.beta=1
run rkd-tenth rkd --set method.distance_weight=2.5 --set method.angle_weight=5
run fitnets-beta10 fitnets --set method.beta=10
