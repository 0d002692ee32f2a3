"""What runs on the cluster: the sweep driver against an explicit Ray address.

``run_sweep`` is the target of the SLURM job's rank 0; ``python -m launch.entry`` is the
entrypoint of a Ray Job (``pah launch ray``), where the job supervisor sets
``RAY_ADDRESS`` to the cluster it runs in. Either way the driver gets that address
explicitly, never ``"auto"``, and resumes the sweep if ``storage/name`` already holds one.

The driver stops as ``pah sweep`` does (sweeps/interrupts.py): the first SIGINT or SIGTERM
(``ray job stop``, ``scancel``) stops the sweep gracefully, a second at once; as a Ray Job it
exits 130 or 143 with one ``error:`` line that names the resume command, and a sweep with
errored trials exits 1 the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["run_sweep", "main"]


def run_sweep(*, spec: str, overrides: list[str], storage: str, name: str, address: str | None,
              **_: Any) -> str:
    from sweeps.driver import run_sweep as drive

    return str(drive(spec, overrides=tuple(overrides), storage=storage, name=name, address=address,
                     progress=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.entry")
    p.add_argument("spec", nargs="?")
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--probe", action="store_true")
    args = p.parse_args(argv)
    address = os.environ.get("RAY_ADDRESS") or None  # set by the Ray Job supervisor
    storage = os.path.expanduser(args.storage)
    from pah.errors import Failed, Interrupted, UserError, say

    try:
        if args.probe:
            from launch.probe import probe

            probe(storage=storage, name=args.name, address=address)
        else:
            run_sweep(spec=args.spec, overrides=args.overrides, storage=storage, name=args.name, address=address)
    except (Interrupted, Failed, UserError) as e:  # as `pah sweep` ends: one error: line, its exit code
        say(e)
        return e.exit_code if isinstance(e, Interrupted) else 2 if isinstance(e, UserError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
