"""Orchestration cost of a trial: what a sweep spends per trial beyond the trials' own work (issue 23, item 4).

    .venv/bin/python bench/orchestration.py                      # 40 trials, W&B offline, then disabled
    .venv/bin/python bench/orchestration.py --trials 40 --wandb offline --json out.json

Runs the real ``pah sweep`` (its own process, its own local Ray) on a spec of tiny synthetic
trials (``data.name=synthetic`` shaped like split-digits, 20 images a class, the small MLP, one
epoch a task, 5 tasks), ``max_concurrent`` = the machine's cores, no scheduler, no confirm phase,
and measures from the process's start to its exit:

    cost per trial = (wall - sum over trials of (setup + training + evaluation) / concurrency) / trials

(each trial's own seconds from its ``result.json`` ``timing``). The driver's own output lines
timestamp its stages: Ray up (the first ``[search]`` line), the first trial started, the last
trial ended, the process's exit (the table and ``report.html`` after the search). Each
``--wandb`` mode is one sweep, so the W&B logging processes' share is the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
description: orchestration benchmark, tiny synthetic trials
base: split-digits-pah
set:
  data.name: synthetic
  data.shape_like: split-digits
  data.train_per_class: 20
  data.test_per_class: 10
  data.val_fraction: 0.2
  model.backbone: mlp
  train.epochs_per_task: 1
space:
  train.lr: {{loguniform: [0.0005, 0.01]}}
searcher: optuna-tpe
metric: val_avg_acc
mode: max
num_samples: {trials}
max_concurrent: {concurrency}
scheduler: none
resources: {{cpus: 1, gpus: 0}}
confirm: {{top_k: 0}}
max_failures: 0
wandb: {{mode: {wandb}}}
"""


def one_sweep(trials: int, concurrency: int, wandb: str, root: Path) -> dict:
    spec = root / f"orch-{wandb}.yaml"
    spec.write_text(SPEC.format(trials=trials, concurrency=concurrency, wandb=wandb))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_MODE", None)
    t0 = time.monotonic()
    stamps: dict[str, float] = {}
    lines = []
    proc = subprocess.Popen([sys.executable, "-m", "pah", "sweep", str(spec), "--storage", str(root), "--name",
                             f"orch-{wandb}", "--progress", "trials"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        now = time.monotonic() - t0
        lines.append(line.rstrip())
        if line.startswith("[search]"):
            stamps.setdefault("ray_up", now)
            if " start " in line:
                stamps.setdefault("first_start", now)
            if " finished " in line or "errored" in line.split("|")[0]:
                stamps["last_end"] = now
    rc = proc.wait()
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit("pah sweep failed:\n" + "\n".join(lines[-30:]))
    results = [json.loads(p.read_text()) for p in (root / f"orch-{wandb}" / "trials" / "search").glob("*/result.json")]
    own = sum(r["timing"]["setup_seconds"] + r["timing"]["train_seconds"] + r["timing"]["eval_seconds"]
              + r["timing"].get("end_task_seconds", 0.0) for r in results)
    return {
        "wandb": wandb, "trials": len(results), "concurrency": concurrency, "wall_s": round(wall, 2),
        "trials_own_s": round(own, 2),
        "cost_per_trial_s": round((wall - own / concurrency) / len(results), 3),
        "stages_s": {k: round(v, 2) for k, v in stamps.items()} | {"exit": round(wall, 2)},
        "search_cost_per_trial_s": round(((stamps.get("last_end", wall) - stamps.get("first_start", 0.0))
                                          - own / concurrency) / len(results), 3),
        "load_average_at_start": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--wandb", nargs="+", default=["offline", "disabled"], choices=["offline", "disabled"])
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="pah-orch-") as tmp:
        for mode in args.wandb:
            load = os.getloadavg()[0]
            r = one_sweep(args.trials, args.concurrency, mode, Path(tmp))
            r["load_average_at_start"] = round(load, 2)
            out.append(r)
            print(f"W&B {mode}: {r['trials']} trials in {r['wall_s']:.1f} s (their own work {r['trials_own_s']:.1f} s "
                  f"over {r['concurrency']} slots): {r['cost_per_trial_s']:.3f} s a trial start to exit, "
                  f"{r['search_cost_per_trial_s']:.3f} s a trial within the search; stages {r['stages_s']}; "
                  f"load {r['load_average_at_start']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
