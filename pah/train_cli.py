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

Exit codes: 0 done; 2 bad input, or another `pah train` running on the same --out (the
error: line names its host and pid); 1 a runtime failure (the reason on one error: line).
A full disk is waited out first: the write is retried with backoff, with a warning every
30 s, for up to PAH_STORAGE_RETRY_S seconds (default 900); a file that still cannot be
written leaves the previous checkpoint intact, and the same command resumes from it;
143 stopped by SIGTERM (e.g. scancel, kill), 130 by SIGINT (Ctrl-C): the checkpoint of the
last finished task is intact, and the error: line names the command that resumes from it.
An unreadable checkpoint is moved aside to state.pt.corrupt with a warning, and the trial
starts again from task 1.

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
    from pah.data import check_task_sizes

    if args.list:
        print("\n".join(preset_names()))
        return 0
    source = args.config or "split-digits-pah"
    cfg = load_config(source, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from pah.io import WriteError, check_output_dir
    from pah.lock import DirLock
    from pah.trial import resolve_device, run_trial

    # ---- every check before anything is written
    out = args.out or Path("runs") / "train" / f"{Path(source).stem}-s{cfg.seed}-{config_id(cfg)}"
    check_output_dir(out, "--out")
    # one training per --out: a second `pah train --out DIR` stops here, naming the first (pah/lock.py)
    lock = DirLock(out, "--out", hint="; wait for it to end, or give another --out")
    lock.check()  # at once, before the device is probed (torch's import takes seconds)
    resolve_device(args.device)
    sizes = check_task_sizes(cfg)  # every task has a training batch (data.val_fraction), before the lock is written
    try:
        lock.acquire()
        _warn_full_batch(cfg, sizes)
        print(f"out: {out}", flush=True)
        with _sigterm_raises():
            result = run_trial(cfg, out, device=args.device, progress=not args.no_progress and sys.stderr.isatty())
    except WriteError as e:  # a full disk or a read-only file system: no traceback, the way on
        print(f"error: {e.strerror}; run the same command again to resume once it can be written",
              file=sys.stderr, flush=True)
        return 1
    except (Terminated, KeyboardInterrupt) as e:  # SIGTERM (scancel, kill) or SIGINT (Ctrl-C)
        name, code = ("SIGTERM", EXIT_SIGTERM) if isinstance(e, Terminated) else ("SIGINT", EXIT_SIGINT)
        print(f"error: stopped by {name}; {out / 'checkpoint' / 'state.pt'} holds the last finished task "
              f"(if any): run the same command again to resume: {_resume_command(args, source, out)}",
              file=sys.stderr, flush=True)
        return code
    finally:
        lock.release()
    m = result["metrics"]
    print(
        f"{result['method']} on {result['dataset']} (seed {result['seed']}): "
        f"ACC {100 * m['avg_acc']:.2f}%  forgetting {100 * m['forgetting']:.2f}%  BWT {100 * m['bwt']:.2f}%  "
        f"[{result['timing']['train_seconds']:.1f} s, {result['timing']['images_per_second']:.0f} img/s]"
    )
    print(json.dumps({"result": str(out / "result.json")}))
    return 0


#: the exit codes of `pah train` stopped by SIGTERM and SIGINT (128 + the signal, as a shell reports them)
EXIT_SIGTERM = 143
EXIT_SIGINT = 130


def _resume_command(args: argparse.Namespace, source: str, out: Path) -> str:
    """The command that continues this trial: the same config and overrides, with its --out."""
    import shlex

    parts = ["pah", "train", source, *(x for o in args.overrides for x in ("--set", o)), "--out", str(out)]
    if args.device != "auto":
        parts += ["--device", args.device]
    return shlex.join(parts)


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


def _warn_full_batch(cfg, sizes: list[int]) -> None:
    """Warn when train.batch_size exceeds a task's training set (the trial then trains that task full-batch).

    Only the data knows the task sizes (its files, val_fraction, train_per_class): ``sizes`` are
    those of ``pah.data.check_task_sizes``, which reads the labels only and splits them by the
    trial's own routine.
    """
    small = [(t, n) for t, n in enumerate(sizes) if n < cfg.train.batch_size]
    if small:
        task, n = min(small, key=lambda tn: tn[1])
        print(f"warning: train.batch_size={cfg.train.batch_size} is larger than the training set of "
              f"{len(small)} of {len(sizes)} task(s) (smallest: task {task + 1}, {n} images); "
              "each such task takes one full-batch step per epoch", file=sys.stderr, flush=True)
