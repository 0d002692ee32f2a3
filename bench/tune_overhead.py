"""Tune overhead: wall time of a trial inside `pah sweep` against `pah train` on the same config.

    .venv/bin/python bench/tune_overhead.py [--config split-digits-pah] [--epochs 2] [--repeats 3]

`pah train` runs REPEATS times as a subprocess (wall time from spawn to exit: Python start,
imports, data, training, result.json). Each is followed by a one-trial sweep of the same
config (all the machine's CPUs for the trial), timed as the wall time of its search phase's
``Tuner.fit()``: Tune's scheduling, the worker process, imports, data, training, per-task
reports and checkpoints. Ray's own start-up (once per sweep, not per trial) is excluded and
shown in ``whole_sweep_command_s``. Requirement: median ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

    # Interleaved (train, sweep, train, sweep, ...) so that load from other processes hits both alike.
    spec = spec_from_dict({
        "name": "overhead", "base": args.config, "set": sets,
        "space": {"train.lr": {"choice": [lr]}},  # the base's own lr: the very same config
        "searcher": "random", "num_samples": 1, "max_concurrent": 1, "scheduler": "none",
        "resources": {"cpus": args.cpus, "gpus": 0}, "wandb": False,
    })
    train_s, trial_s, sweep_s = [], [], []
    for i in range(args.repeats):
        # ---- pah train, as a user runs it
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pah", "train", args.config, "--set", f"train.epochs_per_task={args.epochs}",
             "--out", str(tmp / f"train{i}"), "--device", "cpu", "--no-progress"],
            check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        train_s.append(time.perf_counter() - t0)
        # ---- the same config as one Tune trial (the search phase's Tuner.fit wall time)
        t0 = time.perf_counter()
        sweep = run_sweep(spec, storage=tmp, name=f"sweep{i}", progress=False)
        sweep_s.append(time.perf_counter() - t0)
        trial_s.append(json.loads((sweep / "sweep.json").read_text())["phases"]["search"]["seconds"])
    train_med, trial_med = statistics.median(train_s), statistics.median(trial_s)
    out = {
        "config": args.config, "epochs_per_task": args.epochs, "repeats": args.repeats, "cpus": args.cpus,
        "pah_train_s": [round(x, 2) for x in train_s], "tune_trial_s": [round(x, 2) for x in trial_s],
        "pah_train_median_s": round(train_med, 2), "tune_trial_median_s": round(trial_med, 2),
        "ratio": round(trial_med / train_med, 3),
        "whole_sweep_command_s": [round(x, 2) for x in sweep_s],
        "host": os.uname().nodename, "load_average": os.getloadavg(),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["ratio"] <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
