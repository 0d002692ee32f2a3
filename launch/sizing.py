"""How big a SLURM job to ask for: sized from the sweep spec, checked against the partition's nodes.

sbatch accepts a job that no node of its partition can ever run (more CPUs, GPUs or memory
than any node has, more nodes than the partition holds, a --time above its limit) and the
job then pends for ever (reason ``PartitionConfig``, ``PartitionNodeLimit``, ...). So
``pah launch slurm`` reads the partition with ``sinfo`` first and

- sizes every resource the user did not give from the spec: each Ray node gets CPUs (and
  GPUs) for its share of ``max_concurrent`` trials of ``resources.cpus`` (``.gpus``) each,
  capped by what the partition's nodes have (fewer trials then run at once);
- refuses, with exit 2 naming the option, a request that no ``--nodes`` nodes of the
  partition can meet, and a spec whose single trial would not fit on a node (Ray would
  wait for it for ever).

Everything here is pure except :func:`read_partition`, which runs ``sinfo``.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass

from pah.errors import UserError

__all__ = ["Node", "Partition", "Request", "parse_sinfo", "read_partition", "size_request", "SINFO_FORMAT",
           "pending_reason"]

#: one line per (partition, node): name, node, CPUs, memory MB, gres, features, state, time limit, job size
SINFO_FORMAT = "%P|%N|%c|%m|%G|%f|%T|%l|%s"
DEFAULT_TIME_MIN = 240
DEFAULT_PROBE_CPUS = 4


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    features: frozenset[str]
    state: str


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    max_time_min: int | None  # None: no limit
    max_nodes: int | None  # per job; None: no limit
    default: bool = False


@dataclass(frozen=True)
class Request:
    """What the job will ask for per node, and a line saying where the numbers came from."""

    cpus_per_task: int
    gpus_per_node: int
    time_min: int
    note: str


# --------------------------------------------------------------------------- sinfo


def _time_min(text: str) -> int | None:
    """SLURM's time format (``infinite``, ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in minutes."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", "none", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        h, m, s = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    """GPUs in a gres string such as ``gpu:a100:4(S:0-1),gpu:v100:2`` (or ``(null)``)."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


def _int(text: str) -> int:
    m = re.match(r"\d+", text.strip())
    return int(m.group()) if m else 0


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions by name from ``sinfo -h -N -o SINFO_FORMAT`` output (the default one marked ``*``)."""
    rows: dict[str, list[list[str]]] = {}
    default = None
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) != 9:
            continue
        name = f[0]
        if name.endswith("*"):
            name = default = name[:-1]
        rows.setdefault(name, []).append(f)
    out = {}
    for name, fs in rows.items():
        nodes = {}
        for f in fs:
            features = frozenset(x for x in f[5].split(",") if x and x != "(null)")
            nodes[f[1]] = Node(f[1], _int(f[2]), _int(f[3]), _gpus(f[4]), features, f[6])
        limit = fs[0][7]
        size = fs[0][8].rsplit("-", 1)[-1]
        out[name] = Partition(
            name=name, nodes=tuple(nodes.values()), max_time_min=_time_min(limit),
            max_nodes=int(size) if size.isdigit() else None, default=name == default,
        )
    return out


def read_partition(name: str | None) -> Partition:
    """The partition ``name`` (or the cluster's default) as ``sinfo`` describes it now."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("SLURM is not available here (sinfo not found)") from None
    if out.returncode != 0:
        reason = (out.stderr.strip() or out.stdout.strip() or "no reason given").splitlines()[-1]
        raise UserError(f"SLURM is not available here ({reason})")
    parts = parse_sinfo(out.stdout)
    return pick_partition(parts, name)


def pick_partition(parts: dict[str, Partition], name: str | None) -> Partition:
    known = ", ".join(sorted(parts)) or "none"
    if name is None:
        default = [p for p in parts.values() if p.default]
        if not default:
            raise UserError(f"--partition: this cluster has no default partition; give one of: {known}")
        return default[0]
    if name not in parts:
        raise UserError(f"--partition {name}: invalid partition (not known to sinfo); partitions here: {known}")
    return parts[name]


# --------------------------------------------------------------------------- sizing


def _nth_best(values: list[int], n: int) -> int:
    """The most that each of ``n`` nodes can give (0 if there are fewer than ``n``)."""
    ranked = sorted(values, reverse=True)
    return ranked[n - 1] if len(ranked) >= n else 0


def size_request(
    part: Partition,
    *,
    nodes: int,
    tasks_per_node: int = 1,
    cpus_per_task: int | None = None,
    gpus_per_node: int | None = None,
    time_min: int | None = None,
    mem_gb: float | None = None,
    constraint: str | None = None,
    trial_cpus: float | None = None,
    trial_gpus: float = 0.0,
    max_concurrent: int = 1,
) -> Request:
    """Fill in what the user left out, and refuse what no ``nodes`` nodes of ``part`` can run.

    ``trial_*`` and ``max_concurrent`` come from the spec (None for a probe, which runs 1-CPU
    trials). Options the user gave are checked, never changed.
    """
    where = f"partition {part.name}"
    pool = list(part.nodes)
    if constraint and re.fullmatch(r"[\w.-]+", constraint):  # a plain feature; expressions are left to SLURM
        pool = [n for n in pool if constraint in n.features]
        if not pool:
            have = sorted({f for n in part.nodes for f in n.features})
            raise UserError(f"--constraint {constraint}: no node of {where} has that feature "
                            f"(features: {', '.join(have) or 'none'})")
        where += f" with feature {constraint}"
    if not pool:
        raise UserError(f"--partition {part.name}: the partition has no nodes")
    if part.max_nodes is not None and nodes > part.max_nodes:
        raise UserError(f"--nodes {nodes}: {where} allows at most {part.max_nodes} node(s) per job")
    if nodes > len(pool):
        raise UserError(f"--nodes {nodes}: {where} has only {len(pool)} node(s)")

    node_cpus = _nth_best([n.cpus for n in pool], nodes)
    node_gpus = _nth_best([n.gpus for n in pool], nodes)
    node_mem = _nth_best([n.memory_mb for n in pool], nodes)
    most = f"{'each of ' + str(nodes) + ' nodes' if nodes > 1 else 'a node'} of {where} has at most"
    cap_cpus = node_cpus // tasks_per_node
    cap_gpus = node_gpus // tasks_per_node * tasks_per_node  # gpus are per node, shared by its tasks
    if cap_cpus < 1:
        raise UserError(f"--tasks-per-node {tasks_per_node}: {most} {node_cpus} CPU(s)")

    # ---- time
    if time_min is None:
        time_min = DEFAULT_TIME_MIN if part.max_time_min is None else min(DEFAULT_TIME_MIN, part.max_time_min)
    elif part.max_time_min is not None and time_min > part.max_time_min:
        raise UserError(f"--time {time_min}: {where} allows at most {part.max_time_min} minutes per job")

    # ---- memory
    if mem_gb is not None and node_mem and mem_gb * 1024 > node_mem:
        raise UserError(f"--mem-gb {mem_gb:g}: {most} {node_mem / 1024:.1f} GB of memory")

    # ---- CPUs and GPUs
    ray_nodes = nodes * tasks_per_node
    per_node = math.ceil(max_concurrent / ray_nodes)
    if trial_cpus is None:  # the probe: a few 1-CPU trials per node
        want_cpus, why, one_cpus = DEFAULT_PROBE_CPUS, "probe default", 1
    else:
        want_cpus = max(1, math.ceil(per_node * trial_cpus - 1e-9))
        one_cpus = max(1, math.ceil(trial_cpus - 1e-9))
        why = f"{per_node} concurrent trial(s) per Ray node x {trial_cpus:g} CPU"
    want_gpus = math.ceil(per_node * trial_gpus - 1e-9)
    one_gpus = math.ceil(trial_gpus - 1e-9) if trial_gpus else 0
    if trial_gpus:
        why += f", {trial_gpus:g} GPU"

    if one_cpus > cap_cpus:
        raise UserError(f"spec.resources.cpus: one trial needs {trial_cpus:g} CPU(s) but {most} {node_cpus} "
                        f"(for {tasks_per_node} task(s)); Ray could never start a trial")
    if cpus_per_task is None:
        cpus_per_task = min(want_cpus, cap_cpus)
        if cpus_per_task < want_cpus:
            why += f"; capped at {cap_cpus}, what a node has"
    elif cpus_per_task > cap_cpus:
        raise UserError(f"--cpus-per-task {cpus_per_task}: {most} {node_cpus} CPU(s)"
                        + (f" for {tasks_per_node} tasks" if tasks_per_node > 1 else ""))
    elif cpus_per_task < one_cpus:
        raise UserError(f"--cpus-per-task {cpus_per_task}: one trial needs {trial_cpus:g} CPU(s) "
                        "(spec.resources.cpus); Ray could never start a trial")

    if one_gpus > node_gpus // tasks_per_node:
        raise UserError(f"spec.resources.gpus: one trial needs {trial_gpus:g} GPU(s) but {most} {node_gpus} "
                        f"(for {tasks_per_node} task(s)); Ray could never start a trial")
    if gpus_per_node is None:
        gpus_per_node = min(want_gpus, cap_gpus) if trial_gpus else 0
    elif gpus_per_node > node_gpus:
        raise UserError(f"--gpus-per-node {gpus_per_node}: {most} {node_gpus} GPU(s)")
    elif trial_gpus and gpus_per_node // tasks_per_node < one_gpus:
        raise UserError(f"--gpus-per-node {gpus_per_node}: one trial needs {trial_gpus:g} GPU(s) "
                        f"(spec.resources.gpus) on each of {tasks_per_node} task(s); Ray could never start a trial")

    note = (f"{nodes} node(s) x {tasks_per_node} task(s) x {cpus_per_task} CPU(s), {gpus_per_node} GPU(s) per node, "
            f"{time_min} min ({why}; {where}: {node_cpus} CPUs, {node_gpus} GPUs per node)")
    return Request(cpus_per_task=cpus_per_task, gpus_per_node=gpus_per_node, time_min=time_min, note=note)


# --------------------------------------------------------------------------- pending reasons

#: squeue's pending reasons, in words, saying which ones waiting will never resolve
REASONS: dict[str, str] = {
    "PartitionConfig": "it will never start: it asks for more than the partition's nodes or limits allow "
                       "(CPUs, memory, GPUs or nodes); cancel it and submit a smaller request",
    "PartitionNodeLimit": "it will never start: it asks for more nodes than the partition allows; "
                          "cancel it and submit with fewer --nodes",
    "PartitionTimeLimit": "it will never start: its time limit is above the partition's; "
                          "cancel it and submit with a shorter --time",
    "BadConstraints": "it will never start: no node has the features (--constraint) or resources it asks for",
    "DependencyNeverSatisfied": "it will never start: a job it depends on did not succeed",
    "InvalidAccount": "it will never start: the account is not valid for this user or partition",
    "InvalidQOS": "it will never start: the QOS is not valid for this user or partition",
    "Resources": "waiting for nodes with free CPUs, memory or GPUs",
    "Priority": "waiting behind jobs of higher priority",
    "Dependency": "waiting for a job it depends on",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by its user; release it with scontrol release JOB",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "NodeDown": "a node it needs is down",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "launch failed requeued held": "its start failed and SLURM held it; see the log, "
                                   "then scontrol release JOB",
}


def pending_reason(code: str) -> str:
    """squeue's reason code (``%r``) followed by what it means."""
    code = code.strip()
    key = code.split(",")[0].strip()
    words = REASONS.get(key)
    if words is None and key.startswith("QOS"):
        words = "waiting: a QOS limit of your jobs (CPUs, GPUs, jobs or time) is reached"
    elif words is None and key.startswith("Assoc"):
        words = "waiting: a limit of your account (association) is reached"
    elif words is None and key in ("None", ""):
        return ""
    return f"{code}: {words}" if words else code
