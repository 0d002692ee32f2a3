"""Tune overhead: wall time of a trial inside `pah sweep` against `pah train` on the same config.

    .venv/bin/python bench/tune_overhead.py [--config split-digits-pah] [--epochs 2] [--repeats 3]

`pah train` runs REPEATS times as a subprocess (wall time from spawn to exit: Python start,
imports, data, training, result.json). The sweep runs the same config REPEATS times, one
trial at a time, with all the machine's CPUs per trial; its per-trial time is the wall time
of the search phase's ``Tuner.fit()`` divided by REPEATS: Tune's scheduling, the worker
process, imports, data, training, per-task reports and checkpoints (Ray's own start-up
is not included, and is printed separately). Requirement: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="split-digits-pah")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    from pah.config import load_config
    from sweeps.driver import run_sweep
    from sweeps.spec import spec_from_dict

    sets = {"train.epochs_per_task": args.epochs}
    lr = load_config(args.config, [f"train.epochs_per_task={args.epochs}"]).train.lr
    tmp = Path(tempfile.mkdtemp(prefix="pah-overhead-"))

    # ---- pah train, as a user runs it
    train_s = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pah", "train", args.config, "--set", f"train.epochs_per_task={args.epochs}",
             "--out", str(tmp / f"train{i}"), "--device", "cpu", "--no-progress"],
            check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        train_s.append(time.perf_counter() - t0)

    # ---- the same config as Tune trials, one at a time (the space holds the base's own lr)
    spec = spec_from_dict({
        "name": "overhead", "base": args.config, "set": sets,
        "space": {"train.lr": {"choice": [lr]}}, "searcher": "random", "num_samples": args.repeats,
        "max_concurrent": 1, "scheduler": "none", "resources": {"cpus": args.cpus, "gpus": 0}, "wandb": False,
    })
    t0 = time.perf_counter()
    sweep = run_sweep(spec, storage=tmp, name="sweep", progress=False)
    sweep_total = time.perf_counter() - t0
    state = json.loads((sweep / "sweep.json").read_text())
    per_trial = state["phases"]["search"]["seconds"] / args.repeats
    train_med = statistics.median(train_s)
    out = {
        "config": args.config, "epochs_per_task": args.epochs, "repeats": args.repeats, "cpus": args.cpus,
        "pah_train_s": [round(s, 2) for s in train_s], "pah_train_median_s": round(train_med, 2),
        "tune_trial_s": round(per_trial, 2), "ratio": round(per_trial / train_med, 3),
        "sweep_total_s": round(sweep_total, 2), "ray_start_and_rest_s": round(sweep_total - per_trial * args.repeats, 2),
        "host": os.uname().nodename,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["ratio"] <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
