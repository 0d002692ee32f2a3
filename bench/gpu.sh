#!/usr/bin/env bash
# The one device run (well under 10 minutes on an H100/H200): correctness of the GPU path on
# real Fashion-MNIST, `pah bench` on CUDA, a whole reference-sized trial, and trials/hour when
# packing several trials onto one GPU. Everything it prints also lands in $OUT/log.
#
# From this repo's root, with the device tool (Fashion-MNIST travels as a carried folder):
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
#   run(command="bash bench/gpu.sh", carry=[".data"], timeout_s=600)
# Needs only torch, torchvision, numpy, pyyaml, tqdm, scikit-learn, pandas, scipy, matplotlib.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PAH_DATA_DIR=$PWD/.data WANDB_MODE=offline
PAH="python3 -m pah"
date -u; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"
step() { echo; echo "== $* ($(date -u +%T))"; }

step "1. step time, first vs last task, torchvision ResNet-18 / MobileNetV2, batch 64, Split-CIFAR100 shape"
$PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device cuda --trial-epochs 0 --json "$OUT/bench-pah-resnet18.json"
$PAH bench --method pah --backbone mobilenetv2 --dataset split-cifar100 --device cuda --trial-epochs 0 --json "$OUT/bench-pah-mobilenetv2.json"
$PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device cuda --trial-epochs 0 --set train.compile=true --json "$OUT/bench-pah-resnet18-compile.json"
$PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device cuda --trial-epochs 0 --set train.precision=fp32 --json "$OUT/bench-pah-resnet18-fp32.json"

step "2. a whole trial at the reference's defaults (10 tasks, 15 epochs, 450 train images/class, batch 64)"
$PAH bench --method pah --backbone resnet18 --dataset split-cifar100 --device cuda --steps 5 --trial-epochs 15 --train-per-class 450 --json "$OUT/bench-trial.json"

step "3. correctness on real Fashion-MNIST: ResNet-18 from scratch, 2 epochs a task, batch 64; bf16 vs fp32; PAH vs finetune"
for s in 0 1 2; do
  for prec in bf16 fp32; do
    $PAH train split-fashion-mnist-pah --device cuda --no-progress --set model.backbone=resnet18 --set train.epochs_per_task=2 \
      --set train.batch_size=64 --set train.precision=$prec --set seed=$s --out "$OUT/fm/pah-$prec-s$s" | tail -2
  done
  $PAH train split-fashion-mnist-finetune --device cuda --no-progress --set model.backbone=resnet18 --set train.epochs_per_task=2 \
    --set train.batch_size=64 --set seed=$s --out "$OUT/fm/finetune-bf16-s$s" | tail -2
done
$PAH analyze "$OUT/fm" --by method,train.precision --format md

step "4. packing: K concurrent small trials on one GPU (split-fashion-mnist-pah, small-cnn)"
for k in 1 2 4 8; do
  t0=$(date +%s.%N)
  for i in $(seq 1 "$k"); do
    $PAH train split-fashion-mnist-pah --device cuda --no-progress --set model.backbone=small-cnn --set seed=$((100 + i)) --out "$OUT/pack/k$k-$i" >/dev/null 2>&1 &
  done
  wait
  t1=$(date +%s.%N)
  python3 -c "k=$k; s=$t1-$t0; print(f'{k} concurrent: {s:.1f} s wall, {3600*k/s:.0f} trials/hour')"
done
rm -rf "$OUT/pack" "$OUT/fm"/*/checkpoint
step "done"
