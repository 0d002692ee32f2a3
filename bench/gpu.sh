#!/usr/bin/env bash
# The one device run, under 10 minutes on an H100/H200, most important part first, each part
# under `timeout`: (1) the training step, eager vs CUDA graph, bf16 vs fp32; (2) correctness of
# the GPU paths on real Split-Fashion-MNIST; (3) a whole trial at the reference's defaults;
# (4) trials/hour with several trials packed in one process. It leaves exactly two files in
# $OUT: `log` (everything printed) and `json.tgz` (every figure as JSON; never checkpoints).
#
# From this repo's root, with the device tool (Fashion-MNIST travels as a carried folder):
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
#   run(command="bash bench/gpu.sh", carry=[".data"], timeout_s=600)
# Needs only torch, torchvision, numpy, pyyaml, tqdm (no ray, optuna, wandb or submitit).
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEV=${DEV:-cuda}        # DEV=cpu SCALE=0.05: a smoke run of the script itself, on any machine
SCALE=${SCALE:-1}       # multiplies every part's timeout
t() { python3 -c "print(max(5, int($1 * $SCALE)))"; }
J=$(mktemp -d)  # JSON figures, tarred into $OUT at the end
exec > >(tee "$OUT/log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PAH_DATA_DIR=$PWD/.data PAH_CACHE_DIR=$J/cache WANDB_MODE=offline
PAH="python3 -m pah"
date -u; nvidia-smi -L || true; python3 -c "import torch; print('torch', torch.__version__)"
step() { echo; echo "== $* ($(date -u +%T))"; }
B="$PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device $DEV --trial-epochs 0"

step "1. step time at task 1 and 10, ResNet-18, batch 64, Split-CIFAR100 shape: eager vs CUDA graph, bf16 vs fp32"
timeout "$(t 230)" bash -c "
$B --set train.cuda_graph=true --json $J/step-graph-bf16.json
$B --set train.cuda_graph=true --set train.precision=fp32 --json $J/step-graph-fp32.json
$B --set train.cuda_graph=false --json $J/step-eager-bf16.json
$B --set train.cuda_graph=false --set train.precision=fp32 --json $J/step-eager-fp32.json
$B --set train.cuda_graph=true --set train.compile=true --json $J/step-graph-compile-bf16.json
" || echo "part 1: TIMEOUT or failure (exit $?)"

step "2. correctness on real Split-Fashion-MNIST (ResNet-18 from scratch, 2 epochs a task, batch 64): graph bf16 (2 seeds), eager bf16, eager fp32"
FM="--device $DEV --no-progress"
timeout "$(t 190)" bash -c "
for run in 'graph-bf16 0 true auto' 'graph-bf16 1 true auto' 'eager-bf16 0 false auto' 'eager-fp32 0 false fp32'; do
  set -- \$run
  $PAH train split-fashion-mnist-pah $FM --set train.cuda_graph=\$3 --set train.precision=\$4 --set seed=\$2 --out $J/fm/\$1-s\$2 | tail -1
done
" || echo "part 2: TIMEOUT or failure (exit $?)"
for d in "$J"/fm/*/; do [ -f "$d/result.json" ] && python3 -c "
import json, sys; r = json.load(open('$d/result.json')); t = r['timing']
print(f\"{'$d'.split('/')[-2]:16} ACC {100*r['metrics']['avg_acc']:.2f} FM {100*r['metrics']['forgetting']:.2f} train {t['train_seconds']:.1f} s setup {t['setup_seconds']:.1f} s eval {t['eval_seconds']:.1f} s\")"; done
echo "(reference on this setting: 98.48 +- 0.47 / 0.57 +- 0.49; ours on CPU fp32: 98.66 +- 0.42 / 0.55 +- 0.39, bench/RESULTS.md)"

step "3. a whole trial at the reference's defaults (10 tasks, 15 epochs, 450 train images/class, batch 64), CUDA graph"
timeout "$(t 100)" $PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device $DEV --steps 5 --warmup 5 \
  --trial-epochs 15 --train-per-class 450 --set train.cuda_graph=true --json "$J/trial-reference-defaults.json" \
  || echo "part 3: TIMEOUT or failure (exit $?)"

step "4. trials/hour: 4 Split-Fashion-MNIST-shaped trials packed in one process vs one alone (small-cnn, ResNet-18), CUDA graph"
timeout "$(t 80)" bash -c "
$PAH bench --method pah --backbone small-cnn --dataset split-fashion-mnist --device $DEV --steps 5 --warmup 5 --trial-epochs 2 --train-per-class 1000 --pack 4 --set train.cuda_graph=true --json $J/pack-small-cnn.json
$PAH bench --method pah --backbone resnet18 --dataset split-fashion-mnist --device $DEV --steps 5 --warmup 5 --trial-epochs 2 --train-per-class 1000 --pack 4 --set train.cuda_graph=true --json $J/pack-resnet18.json
" || echo "part 4: TIMEOUT or failure (exit $?)"

step "done"
find "$J/fm" -name result.json 2>/dev/null | while read -r f; do cp "$f" "$J/fm-$(basename "$(dirname "$f")").json"; done
(cd "$J" && find . -maxdepth 1 -name "*.json" | tar czf "$OUT/json.tgz" -T -)
ls -la "$OUT"
