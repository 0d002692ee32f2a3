"""Run a Ray Tune experiment driven by Optuna: search, then confirm the best configs over seeds.

SPEC is a YAML file or a shipped spec name (list them with --list; try `quickstart`).
`--set KEY=VALUE` sets a spec field (num_samples=2, confirm.top_k=1, scheduler.name=none,
wandb.enabled=false) or else overrides the base trial config (train.epochs_per_task=1).
The command prints `sweep: DIR` first; `pah sweep --resume DIR` continues an interrupted
sweep and `pah analyze DIR` tabulates it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

__all__ = ["configure", "run"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", metavar="SPEC", help="YAML path or shipped spec name (default: quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set a spec field or override a base config key (repeatable)")
    p.add_argument("--storage", metavar="DIR", help="parent directory of the sweep dir (default: runs/sweeps), or "
                   "a bucket prefix: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX (no shared filesystem needed)")
    p.add_argument("--name", metavar="NAME", help="sweep dir name (default: SPEC-YYYYmmdd-HHMMSS); an existing sweep there is resumed")
    p.add_argument("--address", metavar="ADDR", help="join this Ray cluster (default: start a private local Ray)")
    p.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR (a path or s3://..., gs://... URI)")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument("--progress", choices=("auto", "trials", "summary"), default="auto",
                   help="live lines: 'trials', one per trial start and end; 'summary', a status line every 30 s "
                        "(trials ended, running, best so far, rate, ETA) and only notable trials (errors, retries, "
                        "a new best); 'auto' (default): 'trials' for phases of up to 30 trials, else 'summary'. "
                        "Set when a phase starts (a resumed phase keeps its own)")
    p.add_argument("--list", action="store_true", help="list the shipped specs and exit")
    p.add_argument("--print-spec", action="store_true", help="print the resolved spec as YAML and exit")


def run(args: argparse.Namespace) -> int:
    from pah.errors import UserError
    from sweeps.spec import load_spec, spec_names

    if args.list:
        print("\n".join(spec_names()))
        return 0
    if args.resume is not None and args.spec is not None:
        raise UserError("give either SPEC or --resume DIR, not both")
    if args.resume is None:
        spec = load_spec(args.spec or "quickstart", args.overrides)  # exit 2 before anything starts
        if args.print_spec:
            import yaml

            print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
            return 0
    else:
        spec = None
    _check_paths(args)
    if spec is not None:
        _check_task_sizes(spec)
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise UserError(f"pah sweep needs Ray Tune: pip install 'pah[sweep]' ({e})") from None
    from sweeps.driver import run_sweep

    run_sweep(spec, storage=args.storage, name=args.name, address=args.address, resume=args.resume,
              progress=False if args.quiet else args.progress)
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    """--resume, --storage, --name and --address, checked before Ray starts or anything is written."""
    from pah import storage
    from pah.errors import UserError
    from pah.io import check_output_dir

    if args.resume is not None and storage.is_uri(args.resume):
        storage.check(args.resume, "--resume")  # exit 2: no bucket, no access, no endpoint
        if not storage.exists(storage.join(args.resume, "sweep.json")):
            raise UserError(f"--resume {args.resume}: not a sweep (no sweep.json there; expected the 'sweep: URI' line)")
    elif args.resume is not None:
        d = args.resume = Path(args.resume)
        if not d.exists():
            raise UserError(f"--resume {d}: does not exist; expected a sweep directory (the 'sweep: DIR' line)")
        if not d.is_dir():
            raise UserError(f"--resume {d}: is a file; expected a sweep directory (the 'sweep: DIR' line)")
        state = d / "sweep.json"
        if not state.is_file():
            raise UserError(f"--resume {d}: not a sweep directory (no sweep.json)")
        try:
            spec = json.loads(state.read_bytes().decode("utf-8"))["spec"]
            if not isinstance(spec, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"--resume {d}: {state} is unreadable or not a sweep's state (JSON with a 'spec')") from None
        check_output_dir(d, "--resume")
    else:
        if args.name is not None and (not re.fullmatch(r"[A-Za-z0-9._=+-]+", args.name) or args.name in (".", "..")):
            raise UserError(f"--name {args.name!r}: expected a plain directory name (letters, digits, . _ - = +), "
                            "which stays inside --storage")
        if args.storage is not None and storage.is_uri(args.storage):
            storage.check(args.storage)  # exit 2 before Ray starts
        else:
            from sweeps.phases import DEFAULT_STORAGE

            parent = Path(args.storage) if args.storage is not None else DEFAULT_STORAGE
            check_output_dir(parent, "--storage")
            if args.name is not None and (parent / args.name).exists() and not (parent / args.name).is_dir():
                raise UserError(f"--name {args.name}: {parent / args.name} is a file; expected a sweep directory "
                                "(an existing sweep, or a new name)")
    if args.address is not None and not re.fullmatch(r"auto|local|(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", args.address):
        raise UserError(f"--address {args.address!r}: expected HOST:PORT of a Ray cluster's head (e.g. 10.0.0.1:6379), "
                        "ray://HOST:PORT or auto")


def _check_task_sizes(spec) -> None:
    """Every task of the base config has a training batch (``data.val_fraction``), checked before Ray starts;
    a dataset the driver's machine lacks is left to the trials (a cluster's nodes may hold it)."""
    from pah.data import check_task_sizes

    check_task_sizes(spec.trial_config(), missing_ok=True)
