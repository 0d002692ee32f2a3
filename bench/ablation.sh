#!/usr/bin/env bash
# The validity ablation (docs/method.md): PAH at the reference's setting on real
# Split-Fashion-MNIST (torchvision ResNet-18 from scratch, 2 epochs a task, batch 64,
# lr 1e-4 / 1e-3, hard prototype loss 0, fp32), the shipped config and the same with one
# choice switched back at a time; then every other method (the distillation's kin hnet and lwf,
# the regularisation and replay baselines, finetune and joint as the bounds).
# A Markdown table of ACC and forgetting per seed goes to stdout.
#
#   bash bench/ablation.sh [OUT] [SEEDS] [TRAIN_PER_CLASS]
#   bash bench/ablation.sh runs/ablation "0 1" 1500     # the screen in docs/method.md, ~40 min on 2 cores
#   JOBS=1 ABLATIONS=baselines bash bench/ablation.sh   # only the shipped PAH and the other methods
#   TABLE_ONLY=1 bash bench/ablation.sh runs/ablation    # the table of what OUT holds, nothing trained
#   ONLY="finetune joint ewc" ABLATIONS=baselines bash bench/ablation.sh ...   # these methods alone
# Each trial runs on one core (OMP_NUM_THREADS=1), JOBS (default: the number of cores) at once;
# finished trials are kept, so a re-run only trains what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablation}
SEEDS=${2:-0 1}
PER_CLASS=${3:-1500}
JOBS=${JOBS:-$(nproc)}
ABLATIONS=${ABLATIONS:-all}
PAH=${PAH:-.venv/bin/pah}
mkdir -p "$OUT"

variants=("pah|shipped (all fixes)|")
if [ "$ABLATIONS" != baselines ]; then
  variants+=(
    "pah|batchnorm=adapt (tested with the last task's statistics)|train.batchnorm=adapt"
    "pah|batchnorm=freeze (statistics of task 1 only)|train.batchnorm=freeze"
    "pah|KL averaged over old tasks|method.kd_reduction=mean"
    "pah|prototype losses train everything|method.proto_grad=all"
    "pah|old prototypes frozen|method.old_conditions=freeze"
    "pah|hypernetwork with biases|method.hyper_bias=true"
    "pah|no learning-rate warm-up|train.warmup_steps=0"
  )
fi
variants+=(
  "hnet|hnet (embeddings, no prototypes)|"
  "lwf|lwf (static heads)|"
  "ewc|ewc|"
  "si|si|"
  "er|er (reservoir replay)|"
  "agem|agem|"
  "derpp|derpp|"
  "finetune|finetune (lower bound)|"
  "joint|joint (upper bound)|"
)

run_one() {  # method label overrides seed
  local method=$1 label=$2 sets=$3 seed=$4
  local dir="$OUT/$(echo "$method-$label" | tr -c 'a-zA-Z0-9=.-' '_')-s$seed"
  [ -f "$dir/result.json" ] && return 0
  local args=(--set "seed=$seed" --set train.precision=fp32 --set "data.train_per_class=$PER_CLASS")
  for kv in $sets; do args+=(--set "$kv"); done
  OMP_NUM_THREADS=1 "$PAH" train "split-fashion-mnist-$method" --device cpu --no-progress --out "$dir" "${args[@]}" >"$dir.log" 2>&1 \
    || echo "failed: $dir (see $dir.log)" >&2
  printf '%s\n' "$label" >"$dir.label"
}

for v in "${variants[@]}"; do
  [ "${TABLE_ONLY:-0}" = 1 ] && break
  IFS='|' read -r method label sets <<<"$v"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $method "* ]]; then continue; fi
  for seed in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    run_one "$method" "$label" "$sets" "$seed" &
  done
done
wait

python3 - "$OUT" <<'PY'
import json, pathlib, sys
from collections import defaultdict
rows = defaultdict(dict)
for res in sorted(pathlib.Path(sys.argv[1]).glob("*-s*/result.json")):
    label_file = res.parent.with_name(res.parent.name + ".label")
    label = label_file.read_text().strip() if label_file.exists() else res.parent.name
    rows[label][json.loads(res.read_text())["seed"]] = json.loads(res.read_text())["metrics"]
seeds = sorted({s for r in rows.values() for s in r})
print("| variant | " + " | ".join(f"seed {s} ACC / FM %" for s in seeds) + " | mean ACC % | mean FM % |")
print("|---|" + "---:|" * (len(seeds) + 2))
for label, r in sorted(rows.items(), key=lambda kv: (not kv[0].startswith("shipped"), kv[0].startswith(("hnet", "lwf", "ewc", "si", "er", "agem", "derpp", "finetune", "joint")), kv[0])):
    cells = [f"{100 * r[s]['avg_acc']:.2f} / {100 * r[s]['forgetting']:.2f}" if s in r else "—" for s in seeds]
    acc = sum(m["avg_acc"] for m in r.values()) / len(r)
    fm = sum(m["forgetting"] for m in r.values()) / len(r)
    print(f"| {label} | " + " | ".join(cells) + f" | {100 * acc:.2f} | {100 * fm:.2f} |")
PY
