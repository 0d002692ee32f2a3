"""Train one trial: the whole task sequence, with evaluation after every task.

CONFIG is a YAML file or a preset name (DATASET-METHOD, e.g. split-digits-pah; list
them with --list). The trial writes DIR/checkpoint/state.pt after every task and
DIR/result.json at the end; run the same command again and it resumes from the last
finished task.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["configure", "run"]


EPILOG = """\
Bad input (a config file that is not a UTF-8 YAML mapping, an unknown key, a wrong type,
a value out of range such as train.batch_size above 1048576, an --out that is a file) is
exit 2 with one error: line, before anything is written.

Exit codes: 0 done; 2 bad input; 1 a runtime failure (the reason on one error: line; a
file that could not be written, e.g. a full disk, leaves the previous checkpoint intact);
143 stopped by SIGTERM (e.g. scancel, kill): the checkpoint of the last finished task is
intact. Run the same command again to resume from it. An unreadable checkpoint is moved
aside to state.pt.corrupt with a warning, and the trial starts again from task 1.

A batch larger than a task's training set is a warning, not an error: that task takes
one full-batch step per epoch. Only the data knows the task sizes (its files, the
validation split, data.train_per_class), a sweep may search batch sizes across
datasets, and full-batch training is a valid run; the warning says which tasks.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML path or preset name (default: split-digits-pah)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs_per_task=3 (repeatable)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="trial directory, created if missing (default: runs/train/CONFIG-sSEED-ID)")
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
    from pah.io import WriteError, check_output_dir
    from pah.trial import resolve_device, run_trial

    # ---- every check before anything is written
    resolve_device(args.device)
    out = args.out or Path("runs") / "train" / f"{Path(source).stem}-s{cfg.seed}-{config_id(cfg)}"
    check_output_dir(out, "--out")
    _warn_full_batch(cfg)
    print(f"out: {out}", flush=True)
    try:
        with _sigterm_raises():
            result = run_trial(cfg, out, device=args.device, progress=not args.no_progress and sys.stderr.isatty())
    except WriteError as e:  # a full disk or a read-only file system: no traceback, the way on
        print(f"error: {e.strerror}; run the same command again to resume once it can be written",
              file=sys.stderr, flush=True)
        return 1
    except Terminated:
        print(f"error: stopped by SIGTERM; {out / 'checkpoint' / 'state.pt'} holds the last finished task "
              "(if any): run the same command again to resume", file=sys.stderr, flush=True)
        return EXIT_SIGTERM
    m = result["metrics"]
    print(
        f"{result['method']} on {result['dataset']} (seed {result['seed']}): "
        f"ACC {100 * m['avg_acc']:.2f}%  forgetting {100 * m['forgetting']:.2f}%  BWT {100 * m['bwt']:.2f}%  "
        f"[{result['timing']['train_seconds']:.1f} s, {result['timing']['images_per_second']:.0f} img/s]"
    )
    print(json.dumps({"result": str(out / "result.json")}))
    return 0


#: the exit code of `pah train` stopped by SIGTERM (128 + 15, as a shell reports a process it killed)
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the trial like Ctrl-C does (not an Exception: nothing catches it by mistake)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread while training.

    Every file the trial writes goes through a temp file and a rename (pah/io.py), so unwinding
    at any point leaves the last checkpoint whole: either the new one (renamed in) or the
    previous one (the temp file is removed on the way out).
    """

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warn_full_batch(cfg) -> None:
    """Warn when train.batch_size exceeds a task's training set (the trial then trains that task full-batch).

    Only the data knows the task sizes (its files, val_fraction, train_per_class), so it is read
    once here, labels only: images are stand-ins of one byte, split by the trial's own routine.
    """
    import numpy as np
    import torch

    from pah.data import BENCHMARKS, Arrays, build_tasks

    bench = BENCHMARKS.get(cfg.data.name)()
    arrays = bench.load(cfg.data, cfg.seed)

    def stub(n: int) -> np.ndarray:
        return np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (n, 1, 1, 1))

    labels = Arrays(stub(len(arrays.y_train)), arrays.y_train, stub(len(arrays.y_test)), arrays.y_test)
    del arrays
    tasks = build_tasks(labels, bench.resolved_shape(cfg.data), cfg.data, cfg.seed, torch.device("cpu"))
    small = [(d.task, len(d.y_train)) for d in tasks if len(d.y_train) < cfg.train.batch_size]
    if small:
        task, n = min(small, key=lambda tn: tn[1])
        print(f"warning: train.batch_size={cfg.train.batch_size} is larger than the training set of "
              f"{len(small)} of {len(tasks)} task(s) (smallest: task {task + 1}, {n} images); "
              "each such task takes one full-batch step per epoch", file=sys.stderr, flush=True)
