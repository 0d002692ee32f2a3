"""The ``pah`` command: train, sweep, launch, analyze, bench.

Each subcommand lives in its own package and exposes ``configure(parser)`` and
``run(args) -> int``; heavy imports (Ray, Optuna, submitit, W&B) happen inside
``run``, so ``pah train`` and ``pah bench`` work where only PyTorch is installed.
Exit codes: 0 success, 2 bad input (one ``error:`` line), 1 runtime failure, 128 + N stopped by
signal N (130 SIGINT, 143 SIGTERM; the ``error:`` line names the command that resumes).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from pathlib import Path

from pah.errors import Failed, Interrupted, UserError, one_line, say

__all__ = ["main", "build_parser"]

SUBCOMMANDS = {
    "train": ("pah.train_cli", "one trial: the whole task sequence, resumable"),
    "sweep": ("sweeps.cli", "a Ray Tune + Optuna sweep over whole task sequences"),
    "launch": ("launch.cli", "submit a sweep to SLURM (submitit) or a Ray cluster (Ray Jobs)"),
    "analyze": ("analysis.cli", "seed-averaged tables and plots from sweep or trial directories"),
    "bench": ("pah.bench", "the performance benchmark: step time at the first and last task"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pah",
        description="Prototype-Augmented Hypernetworks for continual learning, and the sweeps to study them.",
        epilog="Run 'pah COMMAND --help' for each command's options. Presets: 'pah train --list'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip().split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; run as the process's main program (no ``argv``) it also owns SIGINT and SIGTERM
    (pah.signals): whatever moment a signal comes, the process ends with 128 + its number."""
    from pah import signals

    if argv is None:
        signals.own()
    try:
        code = _main(argv)
    finally:
        if argv is None:  # the outcome is decided: only the interpreter's exit hooks are left
            signals.take(signals.exit_at_once)
    if argv is None:
        signals.end(code)  # work that left its teardown to the process's end (a sweep's Ray after a signal)
    return code


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except UserError as e:
        say(e)
        return 2
    except Interrupted as e:  # a signal; the message names the command that resumes
        say(e)
        return e.exit_code
    except Failed as e:  # ended, results kept, part of the work failed: the message says what and what next
        say(e)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted by SIGINT", file=sys.stderr)
        return 130
    except Exception as e:  # a runtime failure: the reason, and the traceback for a bug report
        from pah.trial import NonFiniteLoss

        if _out_of_memory(e):  # the reason is a size, not a bug: no traceback
            print(f"error: out of memory ({one_line(str(e) or type(e).__name__, 300)}); try a smaller "
                  "train.batch_size or train.eval_batch_size", file=sys.stderr)
            return 1
        if isinstance(e, OSError) and e.errno in _CANNOT_WRITE:  # a read-only or full storage path: no bug either
            where = f" {e.filename}" if e.filename else ""
            print(f"error: cannot write{where}: {e.strerror}; run the same command again once it can be written",
                  file=sys.stderr)
            return 1
        if not isinstance(e, NonFiniteLoss):
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


#: errno values of a storage path that cannot be written (read-only, no permission, full)
_CANNOT_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _out_of_memory(e: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, Python's MemoryError (NumPy's too), or torch's CPU allocator failing."""
    return (type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError)
            or (isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)))


def default_out(kind: str, name: str) -> Path:
    return Path("runs") / kind / Path(name).stem


if __name__ == "__main__":
    sys.exit(main())
