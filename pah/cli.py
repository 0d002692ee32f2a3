"""The ``pah`` command: train, sweep, launch, analyze, bench.

Each subcommand lives in its own package and exposes ``configure(parser)`` and
``run(args) -> int``; heavy imports (Ray, Optuna, submitit, W&B) happen inside
``run``, so ``pah train`` and ``pah bench`` work where only PyTorch is installed.
Exit codes: 0 success, 2 bad input (one ``error:`` line), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from pah.errors import UserError

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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a runtime failure: the reason, and the traceback for a bug report
        from pah.trial import NonFiniteLoss

        if type(e).__name__ == "OutOfMemoryError":  # torch's: the reason is the size, not a bug
            print(f"error: out of memory ({one_line(str(e), 300)}); try a smaller train.batch_size or "
                  "train.eval_batch_size", file=sys.stderr)
            return 1
        if not isinstance(e, NonFiniteLoss):
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def one_line(message: str, limit: int = 1000) -> str:
    """A message as one line of at most ``limit`` characters (user input can hold newlines or be huge)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def default_out(kind: str, name: str) -> Path:
    return Path("runs") / kind / Path(name).stem


if __name__ == "__main__":
    sys.exit(main())
