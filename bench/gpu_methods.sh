#!/usr/bin/env bash
# Every method's training step as a CUDA graph against the same method run eagerly, on real
# Split-Fashion-MNIST (ResNet-18 from scratch, 1 epoch a task, batch 64): the graph path must
# run for each method and land where the eager path lands. Ten trials at a time on one GPU.
# Leaves `log` and `json.tgz` (each trial's result.json) in $OUT.
#
#   run(command="bash bench/gpu_methods.sh", carry=[".data"], timeout_s=340)  # two waves of at most 150 s
#   run(command="METHODS='agem ewc' SEEDS='0 1 2' TOGETHER=1 T=200 bash bench/gpu_methods.sh", carry=[".data"], timeout_s=300)
# SEEDS: the seeds of every method (default 0); TOGETHER=1: graph and eager trials in one wave;
# T: each trial's time limit in seconds (default 150).
# DEV=cpu METHODS=si EXTRA="--set model.backbone=small-cnn --set data.train_per_class=200": a smoke run here.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEV=${DEV:-cuda}
EXTRA=${EXTRA:-}
METHODS=${METHODS:-pah hnet lwf ewc si agem er derpp finetune joint}
SEEDS=${SEEDS:-0}
T=${T:-150}
J=$(mktemp -d)
exec > >(tee "$OUT/log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PAH_DATA_DIR=$PWD/.data PAH_CACHE_DIR=$J/cache WANDB_MODE=offline
date -u; nvidia-smi -L || true
report() {  # one line per trial so far, a mean per method and mode, and every result in json.tgz: a timeout later loses neither
  python3 - "$J" "$METHODS" "$SEEDS" <<'PY'
import json, pathlib, statistics as st, sys
j, methods, seeds = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
for m in methods:
    for graph in ("true", "false"):
        accs, fms = [], []
        for s in seeds:
            r, log = j / f"{m}-s{s}-{graph}" / "result.json", j / f"{m}-s{s}-{graph}.txt"
            if r.exists():
                d = json.loads(r.read_text()); a, f = 100 * d["metrics"]["avg_acc"], 100 * d["metrics"]["forgetting"]
                accs.append(a); fms.append(f)
                print(f"{m:9} graph={graph:5} seed {s} ACC {a:6.2f} FM {f:5.2f} train {d['timing']['train_seconds']:6.1f} s")
            elif log.exists():
                print(f"{m:9} graph={graph:5} seed {s} FAILED or unfinished:", *log.read_text().splitlines()[-2:], sep="\n  ")
        if len(accs) > 1:
            print(f"{m:9} graph={graph:5} MEAN of {len(accs)}: ACC {st.mean(accs):6.2f} ± {st.stdev(accs):.2f} FM {st.mean(fms):5.2f} ± {st.stdev(fms):.2f}")
PY
  (cd "$J" && find . -name result.json | tar czf "$OUT/json.tgz" -T -)
}
trial() {  # method seed graph
  OMP_NUM_THREADS=1 timeout "$T" python3 -m pah train "split-fashion-mnist-$1" --device "$DEV" --no-progress \
    --set train.epochs_per_task=1 --set seed=$2 --set train.cuda_graph=$3 $EXTRA --out "$J/$1-s$2-$3" >"$J/$1-s$2-$3.txt" 2>&1
}
waves=("true" "false")
[ -n "${TOGETHER:-}" ] && waves=("true false")
for wave in "${waves[@]}"; do
  pids=()
  for graph in $wave; do for m in $METHODS; do for s in $SEEDS; do
    trial "$m" "$s" "$graph" & pids+=($!)
  done; done; done
  wait "${pids[@]}"  # not a bare wait: that also waits for the tee above
  report
done
