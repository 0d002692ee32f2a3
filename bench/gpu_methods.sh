#!/usr/bin/env bash
# Every method's training step as a CUDA graph against the same method run eagerly, on real
# Split-Fashion-MNIST (ResNet-18 from scratch, 1 epoch a task, batch 64): the graph path must
# run for each method and land where the eager path lands. Ten trials at a time on one GPU.
# Leaves `log` and `json.tgz` (each trial's result.json) in $OUT.
#
#   run(command="bash bench/gpu_methods.sh", carry=[".data"], timeout_s=340)  # two waves of at most 150 s
# DEV=cpu METHODS=si EXTRA="--set model.backbone=small-cnn --set data.train_per_class=200": a smoke run here.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEV=${DEV:-cuda}
EXTRA=${EXTRA:-}
METHODS=${METHODS:-pah hnet lwf ewc si agem er derpp finetune joint}
J=$(mktemp -d)
exec > >(tee "$OUT/log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PAH_DATA_DIR=$PWD/.data PAH_CACHE_DIR=$J/cache WANDB_MODE=offline
date -u; nvidia-smi -L || true
report() {  # one line per trial of a wave, and every result so far in json.tgz: a timeout later loses neither
  for m in $METHODS; do
    r=$J/$m-$1/result.json
    if [ -f "$r" ]; then cp "$r" "$J/$m-$1.json"; python3 -c "
import json; r = json.load(open('$r')); t = r['timing']
print(f\"{'$m':9} graph={'$1':5} ACC {100*r['metrics']['avg_acc']:6.2f} FM {100*r['metrics']['forgetting']:5.2f} train {t['train_seconds']:6.1f} s\")"
    else echo "$m graph=$1 FAILED or timed out:"; tail -n 2 "$J/$m-$1.txt"; fi
  done
  (cd "$J" && find . -maxdepth 1 -name "*.json" | tar czf "$OUT/json.tgz" -T -)
}
for graph in true false; do
  pids=()
  for m in $METHODS; do
    OMP_NUM_THREADS=1 timeout 150 python3 -m pah train "split-fashion-mnist-$m" --device "$DEV" --no-progress \
      --set train.epochs_per_task=1 --set train.cuda_graph=$graph $EXTRA --out "$J/$m-$graph" >"$J/$m-$graph.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"  # not a bare wait: that also waits for the tee above
  report $graph
done
