"""Submit a sweep to SLURM (submitit; a Ray cluster across the allocation) or to any Ray cluster (Ray Jobs).

  pah launch slurm SPEC [--partition P] [--nodes N] [--gpus-per-node G] [--cpus-per-task C]
                        [--time MINUTES] [--mem-gb M] [--account A] [--qos Q] [--constraint C]
                        [--sbatch KEY=VALUE]... [--storage DIR] [--set KEY=VALUE]... [--wait]
  pah launch ray SPEC --address http://HOST:8265 [--storage DIR] [--set KEY=VALUE]... [--no-wait]
  pah launch status JOB [--address URL]      pah launch cancel JOB [--address URL]

Both print ``sweep: DIR``; a requeued or resubmitted job (same ``--storage`` and
``--name``) resumes that sweep, and finished trials never run again. ``--probe`` runs a
one-minute check of the cluster instead of a sweep. See docs/slurm.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["configure", "run"]

DEFAULT_STORAGE = Path("runs") / "sweeps"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lstrip("-"), value


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="backend", metavar="BACKEND", parser_class=type(p))
    sub.required = True

    def sweep_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec: a YAML path or a shipped name")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec key (repeatable)")
        q.add_argument("--name", help="sweep name under --storage (default: SPEC-TIMESTAMP); "
                                      "an existing sweep of that name is resumed")
        q.add_argument("--probe", action="store_true",
                       help="instead of a sweep, a one-minute Ray Tune check of the cluster (probe.json)")

    s = sub.add_parser("slurm", help="one SLURM job (submitit): a Ray cluster across it, the sweep on its head",
                       description="Submit the sweep as one SLURM job: a Ray cluster across the allocation, the "
                                   "sweep driver on its head. Prints job: ID and sweep: DIR. See docs/slurm.md.")
    sweep_args(s)
    s.add_argument("--storage", default=str(DEFAULT_STORAGE), metavar="DIR",
                   help=f"shared-filesystem folder for sweeps and job logs (default {DEFAULT_STORAGE}), or a bucket "
                        f"prefix s3://BUCKET/PREFIX, gs://... for the sweeps (the job logs then go to {DEFAULT_STORAGE})")
    s.add_argument("--partition", metavar="P", help="SLURM partition (default: the cluster's default)")
    s.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes, one Ray node each (default 1)")
    s.add_argument("--tasks-per-node", type=int, default=1,
                   help="Ray nodes per SLURM node (default 1; 2 tests a multi-node cluster on one machine)")
    s.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="GPUs per node (default: the spec's concurrent trials x resources.gpus, capped by the nodes)")
    s.add_argument("--cpus-per-task", type=int, metavar="C",
                   help="CPUs per Ray node (default: the spec's concurrent trials per node x resources.cpus, "
                        "capped by what the partition's nodes have; 4 for --probe)")
    s.add_argument("--time", type=int, metavar="MINUTES",
                   help="time limit per start; at the limit the job requeues and resumes "
                        "(default 240, or the partition's limit if lower)")
    s.add_argument("--mem-gb", type=float, metavar="M", help="memory per node in GB (default: the partition's)")
    s.add_argument("--account", metavar="A", help="SLURM account to charge")
    s.add_argument("--qos", metavar="Q", help="SLURM quality of service")
    s.add_argument("--constraint", metavar="C", help="node features, e.g. a100")
    s.add_argument("--sbatch", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch exclusive= --sbatch gres=gpu:a100:4")
    s.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on the head's 127.0.0.1")
    s.add_argument("--wait", action="store_true", help="wait for the job to end (requeues included)")
    s.epilog = ("Before submitting, the partition's nodes are read with sinfo: a request that no --nodes nodes of "
                "the partition can meet (CPUs, GPUs, memory, node count, --time) is refused with exit 2 instead of "
                "pending for ever.")

    r = sub.add_parser("ray", help="a Ray Job on a running Ray cluster (cloud, KubeRay, on-prem)",
                       description="Submit the sweep as a Ray Job to a running Ray cluster and stream its logs. "
                                   "Templates for AWS, GCP and KubeRay: launch/templates/. See docs/slurm.md.")
    sweep_args(r)
    r.add_argument("--address", required=True, help="the cluster's dashboard URL, e.g. http://HOST:8265")
    r.add_argument("--storage", default="~/pah/sweeps",
                   help="storage path or URI as the cluster sees it (default ~/pah/sweeps on the head; "
                        "use shared storage or s3://, gs:// for multi-node clusters)")
    r.add_argument("--env", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for the job (repeatable)")
    r.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="extra pip requirement installed for the job (repeatable)")
    r.add_argument("--no-wait", action="store_true", help="submit and return; do not tail the logs")

    for verb, help_ in (("status", "show a launched job's state"), ("cancel", "cancel a launched job")):
        v = sub.add_parser(verb, help=help_)
        v.add_argument("job", metavar="JOB")
        v.add_argument("--address", help="Ray dashboard URL for a Ray Job; without it JOB is a SLURM job id")


def _check_spec(args: argparse.Namespace) -> tuple[str | None, str, Any]:
    """Validate SPEC and --set before anything is queued (exit 2 on a bad one); returns (spec, name, Spec).

    ``spec`` is an absolute path for a file (the job may start in another directory) or a
    shipped name; ``name`` is the sweep's folder under --storage, fixed now so that every
    requeue of the job resumes the same sweep.
    """
    if args.name is not None and (not re.fullmatch(r"[A-Za-z0-9._-]+", args.name or "") or args.name in (".", "..")):
        raise UserError(f"--name may contain only letters, digits, '.', '_' and '-' (a folder inside --storage): "
                        f"{args.name!r}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.probe:
        if args.spec or args.overrides:
            raise UserError("--probe runs no sweep: give no SPEC or --set")
        return None, args.name or f"probe-{stamp}", None
    if not args.spec:
        raise UserError("SPEC is required (a sweep spec YAML path or a shipped name), or use --probe")
    from sweeps.spec import load_spec

    loaded = load_spec(args.spec, list(args.overrides))
    path = Path(args.spec)
    spec = str(path.resolve()) if path.is_file() else args.spec
    return spec, args.name or f"{loaded.name}-{stamp}", loaded


def _run_slurm(args: argparse.Namespace) -> int:
    from launch.sizing import read_partition, size_request
    from launch.slurm import SlurmResources, submit, wait
    from pah.io import check_output_dir

    spec, name, loaded = _check_spec(args)
    # the options' own ranges first (exit 2 without asking SLURM), then the partition's nodes
    given = {k: v for k, v in (("cpus_per_task", args.cpus_per_task), ("gpus_per_node", args.gpus_per_node),
                                ("time_min", args.time)) if v is not None}
    SlurmResources(nodes=args.nodes, tasks_per_node=args.tasks_per_node, mem_gb=args.mem_gb, **given)
    from pah import storage as object_storage

    if object_storage.is_uri(args.storage):  # the sweep in a bucket; submitit's job files still need a shared folder
        if args.probe:
            raise UserError("--probe writes probe.json in a shared folder: give --storage DIR, not a URI")
        object_storage.check(args.storage)  # exit 2 before submitting: no bucket, no access, no endpoint
        launch_root = check_output_dir(DEFAULT_STORAGE, "--storage").expanduser().resolve()
    else:
        launch_root = check_output_dir(args.storage, "--storage").expanduser().resolve()
    # GPUs asked for the site's own way (--sbatch gres=gpu:a100:4) are left to SLURM as they are
    own_gpus = args.gpus_per_node is None and any(
        k.replace("_", "-") in ("gres", "gpus", "gpus-per-node", "gpus-per-task") for k, _ in args.sbatch)
    request = size_request(
        read_partition(args.partition), nodes=args.nodes, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, gpus_per_node=0 if own_gpus else args.gpus_per_node, time_min=args.time,
        mem_gb=args.mem_gb, constraint=args.constraint,
        trial_cpus=loaded.resources.cpus if loaded else None,
        # with resources.pack: K, each pack of K trials shares resources.gpus
        trial_gpus=loaded.resources.gpus / loaded.resources.pack if loaded and not own_gpus else 0.0,
        max_concurrent=loaded.max_concurrent if loaded else 1,
    )
    resources = SlurmResources(
        partition=args.partition, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
        cpus_per_task=request.cpus_per_task, gpus_per_node=request.gpus_per_node, time_min=request.time_min,
        mem_gb=args.mem_gb, account=args.account, qos=args.qos, constraint=args.constraint,
        sbatch=dict(args.sbatch),
    )
    storage = args.storage.rstrip("/") if object_storage.is_uri(args.storage) else str(launch_root)
    if args.probe:
        target, kwargs = "launch.probe:probe", {"storage": storage, "name": name}
    else:
        target = "launch.entry:run_sweep"
        kwargs = {"spec": spec, "overrides": list(args.overrides), "storage": storage, "name": name}
    sub = submit(target, kwargs, resources=resources, launch_dir=launch_root / f"{name}.slurm",
                 job_name=f"pah-{name}", dashboard=args.dashboard)
    print(f"job: {sub.job_id}")
    print(f"sweep: {storage}/{name}")
    print(f"resources: {request.note}")
    print(f"log: {sub.stdout}")
    print(f"err: {sub.stderr}")
    print(f"watch: pah launch status {sub.job_id}   (or: squeue -j {sub.job_id}; tail -f {sub.stdout})")
    print(f"cancel: pah launch cancel {sub.job_id}   (or: scancel {sub.job_id})")
    print(f"resume after it ends: pah launch slurm {args.spec or '--probe'} --storage {storage} --name {name}",
          flush=True)
    return wait(sub) if args.wait else 0


def _run_ray(args: argparse.Namespace) -> int:
    from launch import rayjob

    spec, name, _ = _check_spec(args)
    if not (args.storage.startswith(("/", "~")) or "://" in args.storage):
        # the driver runs in a temporary working dir on the cluster: a relative path would vanish with it
        raise UserError(f"--storage must be absolute (as the cluster sees it) or start with ~, got {args.storage!r}")
    job_id = rayjob.submit(address=args.address, spec=spec, overrides=list(args.overrides), storage=args.storage,
                           name=name, probe=args.probe, env=dict(args.env), pip=list(args.pip))
    print(f"job: {job_id}")
    print(f"sweep: {args.storage.rstrip('/')}/{name}  (on the cluster)")
    print(f"watch: pah launch status {job_id} --address {args.address}   "
          f"(or: ray job logs --address {args.address} --follow {job_id})")
    print(f"cancel: pah launch cancel {job_id} --address {args.address}   "
          f"(or: ray job stop --address {args.address} {job_id})", flush=True)
    if args.no_wait:
        return 0
    state = rayjob.follow(args.address, job_id)
    print(f"state: {state}", flush=True)
    if state != "SUCCEEDED":  # stopped, failed, interrupted, lost: the sweep resumes where it is
        from pah.errors import Failed

        again = shlex.join(["pah", "launch", "ray", *([args.spec] if args.spec else []),
                            *(x for o in args.overrides for x in ("--set", o)), "--address", args.address,
                            "--storage", args.storage, "--name", name])
        if state == "LOST":
            raise Failed(f"lost the Ray cluster at {args.address} while job {job_id} ran: no answer for "
                         f"{rayjob.LOST_CLUSTER_S:.0f} s (its head node gone, or cut off from here); the sweep "
                         f"lives on in {args.storage.rstrip('/')}/{name} if that storage outlived the head (a "
                         f"bucket, a shared filesystem): resume on a new or restored cluster with: {again}  "
                         "(--address: the new head's dashboard)")
        raise Failed(f"Ray job {job_id} ended {state} (its log above says why); resume with: {again}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.backend == "slurm":
        return _run_slurm(args)
    if args.backend == "ray":
        return _run_ray(args)
    if args.address:
        from launch import rayjob

        return (rayjob.status if args.backend == "status" else rayjob.cancel)(args.address, args.job)
    if not re.fullmatch(r"\d+(_\d+)?", args.job):
        raise UserError(f"JOB {args.job!r}: expected a SLURM job id such as 4242 (the 'job:' line), "
                        "or give --address URL for a Ray Job")
    from launch import slurm

    return (slurm.status if args.backend == "status" else slurm.cancel)(args.job)
