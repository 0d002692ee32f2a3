"""Train one trial: the whole task sequence, with evaluation after every task.

CONFIG is a YAML file or a preset name (DATASET-METHOD, e.g. split-digits-pah; list
them with --list). The trial writes DIR/checkpoint/state.pt after every task and
DIR/result.json at the end; run the same command again and it resumes from the last
finished task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML path or preset name (default: split-digits-pah)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs_per_task=3 (repeatable)")
    p.add_argument("--out", type=Path, metavar="DIR", help="trial directory (default: runs/train/CONFIG-sSEED-ID)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"], help="where to train (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--list", action="store_true", help="list the shipped presets and exit")


def run(args: argparse.Namespace) -> int:
    from pah.config import config_id, load_config, preset_names, to_yaml

    if args.list:
        print("\n".join(preset_names()))
        return 0
    source = args.config or "split-digits-pah"
    cfg = load_config(source, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from pah.trial import resolve_device, run_trial

    resolve_device(args.device)  # fail before anything is written
    out = args.out or Path("runs") / "train" / f"{Path(source).stem}-s{cfg.seed}-{config_id(cfg)}"
    print(f"out: {out}", flush=True)
    result = run_trial(cfg, out, device=args.device, progress=not args.no_progress and sys.stderr.isatty())
    m = result["metrics"]
    print(
        f"{result['method']} on {result['dataset']} (seed {result['seed']}): "
        f"ACC {100 * m['avg_acc']:.2f}%  forgetting {100 * m['forgetting']:.2f}%  BWT {100 * m['bwt']:.2f}%  "
        f"[{result['timing']['train_seconds']:.1f} s, {result['timing']['images_per_second']:.0f} img/s]"
    )
    print(json.dumps({"result": str(out / "result.json")}))
    return 0
