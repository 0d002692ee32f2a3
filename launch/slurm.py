"""SLURM through submitit: one job over N nodes, a Ray cluster across it, the sweep on its head.

Job shape: ``nodes x tasks_per_node`` tasks (one per node by default); each task runs
:class:`RayClusterJob`. Rank 0 starts the Ray head, writes its address to the launch
folder on the shared storage and waits for the others to join; ranks > 0 start Ray
workers against that address. Rank 0 then runs the target (the sweep driver) against
the head and stops the cluster.

Preemption and timeouts: the callable is a :class:`submitit.helpers.Checkpointable`,
so on SLURM's warning signal it requeues itself with the same arguments, including the
sweep name fixed at submission. The sweep driver resumes the sweep it finds at
``storage/name`` on every start, so a requeue by any route (submitit's checkpoint, a
timeout, ``scontrol requeue``, a node failure) continues it and finished trials never
run again.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from launch.cluster import (
    JOIN_S,
    RayNode,
    allocated_cpus,
    allocated_gpus,
    allocated_memory,
    ray_env,
    wait_for_file,
    wait_for_nodes,
    write_json,
)
from launch.sizing import pending_reason
from pah import signals
from pah.errors import UserError

__all__ = ["SlurmResources", "RayClusterJob", "Submission", "submit", "job_state", "cancel"]

# A sweep resumes on every start, so a timeout is routine: requeue many times, not submitit's 3.
MAX_TIMEOUT_REQUEUES = 20
#: (lowest, highest) of each option: beyond them no cluster could run the job
LIMITS = {"nodes": (1, 100_000), "tasks_per_node": (1, 1024), "cpus_per_task": (1, 100_000),
          "gpus_per_node": (0, 1024), "time_min": (1, 366 * 24 * 60)}


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """What one job asks SLURM for; translated to submitit parameters in one place."""

    partition: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 4
    gpus_per_node: int = 0
    time_min: int = 240
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 90
    sbatch: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "gpus_per_node"):
            (lo, hi), value = LIMITS[name], getattr(self, name)
            opt = "--time" if name == "time_min" else f"--{name.replace('_', '-')}"
            if value < lo:
                raise UserError(f"{opt} must be at least {lo}, got {value}")
            if value > hi:
                raise UserError(f"{opt} must be at most {hi}, got {value}")
        if self.mem_gb is not None and not 0 < self.mem_gb <= 1_000_000:
            raise UserError(f"--mem-gb must be a positive number of GB (at most 1000000), got {self.mem_gb}")

    def submitit_parameters(self, *, job_name: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.time_min,
            "slurm_job_name": job_name,
            # the warning must leave time to requeue, but not eat short test jobs
            "slurm_signal_delay_s": min(self.signal_delay_s, max(10, self.time_min * 60 // 4)),
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        if self.sbatch:
            # KEY= (empty) is a bare flag, e.g. --sbatch exclusive=
            params["slurm_additional_parameters"] = {k.replace("-", "_"): (v if v != "" else True)
                                                     for k, v in self.sbatch.items()}
        return params


class RayClusterJob(submitit.helpers.Checkpointable):
    """The submitted callable: every task runs it; rank 0 runs ``target(**kwargs, address=head)``.

    ``target`` is ``"module:function"`` so the pickle stays small and the function is
    imported in the job from the installed package.
    """

    def __init__(self, target: str, kwargs: dict[str, Any], *, launch_dir: str, tasks_per_node: int,
                 cpus: int, gpus: int, dashboard: bool = False) -> None:
        self.target = target
        self.kwargs = kwargs
        self.launch_dir = launch_dir
        self.tasks_per_node = tasks_per_node
        self.cpus = cpus
        self.gpus = gpus
        self.dashboard = dashboard
        self._node: RayNode | None = None

    # submitit pickles the callable again when it requeues: never the live process
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_node"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._node = None

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        os.environ.update({k: v for k, v in ray_env().items() if k.startswith("RAY_")})
        os.environ.pop("RAY_ADDRESS", None)
        # The contract's default. Set here too because a restored sweep (every requeue) builds
        # Ray's W&B callback without the driver setting the mode first; unset, it asks for a key.
        os.environ.setdefault("WANDB_MODE", "offline")
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        ldir = Path(self.launch_dir)
        tag = f"{env.job_id}.{restart}"  # per start, so a requeued worker never reads a stale address
        head_file, done_file = ldir / f"ray-head.{tag}.json", ldir / f"ray-done.{tag}"
        node = RayNode(
            temp_dir=Path(os.environ.get("PAH_RAY_TMPDIR", "/tmp")) / f"pahray_{env.job_id}_{env.global_rank}",
            log_path=ldir / f"ray.{tag}.rank{env.global_rank}.log",
            num_cpus=allocated_cpus(self.cpus),
            num_gpus=allocated_gpus(self.gpus // self.tasks_per_node),
            memory_bytes=allocated_memory(self.tasks_per_node),
            dashboard=self.dashboard,
        )
        self._node = node
        print(f"pah launch: job {env.job_id} start {restart}, rank {env.global_rank}/{env.num_tasks} "
              f"on {env.hostname}", flush=True)
        if env.global_rank != 0:
            return self._worker(node, head_file, done_file)
        return self._head(node, head_file, done_file, env.num_tasks)

    def _head(self, node: RayNode, head_file: Path, done_file: Path, expected: int) -> Any:
        import ray

        try:
            node.start()
            write_json(head_file, {"address": node.head_address})
            print(f"pah launch: Ray head at {node.head_address} (temp dir {node.temp_dir}, "
                  f"log {node.log_path}); waiting for {expected} node(s)", flush=True)
            ray.init(address=node.head_address, logging_level="WARNING")
            try:
                summary = wait_for_nodes(expected, alive=node.alive)
            finally:
                with signals.kept():  # Ray resets SIGTERM to its default action
                    ray.shutdown()
            write_json(head_file.with_name("cluster.json"), {"address": node.head_address, **summary})
            print(f"pah launch: Ray cluster up: {summary['nodes']} node(s), {summary['cpus']:g} CPU, "
                  f"{summary['gpus']:g} GPU", flush=True)
            module, _, name = self.target.partition(":")
            fn = getattr(importlib.import_module(module), name)
            return fn(**self.kwargs, address=node.head_address)
        finally:
            done_file.touch()
            node.stop()

    def _worker(self, node: RayNode, head_file: Path, done_file: Path) -> None:
        head = wait_for_file(head_file, timeout_s=JOIN_S, alive=lambda: not done_file.exists())
        node.address = head["address"]
        try:
            node.start()
            print(f"pah launch: Ray worker joined {node.address}", flush=True)
            # Serve until rank 0 says the run is over (or our node dies with the head).
            while node.alive() and not done_file.exists():
                time.sleep(1.0)
        finally:
            # The run is over (or failed): no need to drain through a head that is going away.
            node.stop(grace_s=2.0)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue with the same arguments (same sweep name): the next start resumes the sweep."""
        if self._node is not None:
            self._node.stop(grace_s=5.0)
        print("pah launch: requeueing; the sweep resumes on the next start", flush=True)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass(frozen=True)
class Submission:
    job_id: str
    launch_dir: Path
    stdout: Path
    stderr: Path
    job: Any  # submitit.Job


def submit(target: str, kwargs: dict[str, Any], *, resources: SlurmResources, launch_dir: Path,
           job_name: str, dashboard: bool = False) -> Submission:
    """Submit one job; a refused submission (bad partition, option, limit) is a UserError with SLURM's reason."""
    created = None if launch_dir.exists() else launch_dir  # what a refused submission removes again
    while created is not None and not created.parent.exists():
        created = created.parent
    executor = submitit.AutoExecutor(folder=launch_dir, cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    executor.update_parameters(**resources.submitit_parameters(job_name=job_name))
    fn = RayClusterJob(target, kwargs, launch_dir=str(launch_dir), tasks_per_node=resources.tasks_per_node,
                 cpus=resources.cpus_per_task, gpus=resources.gpus_per_node, dashboard=dashboard)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):  # submitit echoes sbatch's stderr; we say it once
            job = executor.submit(fn)
    except (submitit.core.utils.FailedJobError, FileNotFoundError) as e:
        if created is not None:  # a refused job leaves nothing behind
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(e, FileNotFoundError):
            raise UserError(f"SLURM is not available here ({e.filename} not found)") from None
        raise UserError(f"sbatch refused the job: {_sbatch_reason(str(e))}") from None
    return Submission(job_id=str(job.job_id), launch_dir=launch_dir, stdout=Path(job.paths.stdout),
                      stderr=Path(job.paths.stderr), job=job)


def _sbatch_reason(stderr: str) -> str:
    """sbatch's message on one line: its ``error:`` lines, most specific first."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln]
    picked = errors or [ln for ln in lines if not ln.startswith("Try ")] or ["no reason given"]
    return "; ".join(picked)


def _slurm(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"SLURM is not available here ({cmd[0]} not found)") from None


def job_state(job_id: str) -> str:
    """The job's state as accounting sees it (``PENDING``, ``RUNNING``, ``COMPLETED``, ...)."""
    out = _slurm(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"])
    # one line per start of the job ("CANCELLED by 0", "REQUEUED", ...): the last is the current one
    states = [ln.split()[0] for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []
    if states:
        return states[-1]
    out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"])
    return out.stdout.strip() or "UNKNOWN"


def status(job_id: str) -> int:
    """Print what SLURM knows about the job: the queue entry if queued, its accounting record, its state."""
    acct = _slurm(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,State,Elapsed,NodeList,ExitCode"])
    rows = [ln.split("|") for ln in acct.stdout.splitlines() if ln.strip()] if acct.returncode == 0 else []
    queued = _queued(job_id)
    if not rows and not queued:
        raise UserError(f"unknown SLURM job {job_id!r} (not in squeue or sacct)")
    if queued:
        print(_slurm(["squeue", "-j", job_id, "-o", "%.10i %.30j %.10T %.10M %.6D %R"]).stdout.rstrip())
    for jid, name, _, elapsed, nodes, code in rows[-1:]:
        print(f"job: {jid}\nname: {name}\nelapsed: {elapsed}\nnodes: {nodes}\nexit code: {code}")
    state = job_state(job_id)
    print(f"state: {state}")
    if queued:
        out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r"]).stdout.strip().splitlines()
        queue_state, _, code = (out[0] if out else "").partition("|")
        if queue_state == "PENDING" and pending_reason(code):
            print(f"reason: {pending_reason(code)}")
    return 0


def cancel(job_id: str) -> int:
    if not _queued(job_id):  # scancel exits 0, silently, for a job id it does not know
        raise UserError(f"SLURM job {job_id!r} is not queued or running (state: {job_state(job_id)})")
    out = _slurm(["scancel", job_id])
    if out.returncode != 0:
        reason = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no reason given"]
        raise UserError(f"scancel {job_id} failed: {reason[0].replace('scancel: error: ', '')}")
    print(f"cancelled: {job_id}")
    return 0


def wait(submission: Submission, *, poll_s: float = 2.0) -> int:
    """Wait for the job to end (requeues included); 0 if it completed."""
    terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
    while True:
        state = job_state(submission.job_id)
        # REQUEUED/PENDING/RUNNING carry on; a requeued job shows PENDING again, then RUNNING
        if state in terminal and not _queued(submission.job_id):
            print(f"state: {state}", flush=True)
            if state != "COMPLETED":
                print(f"error: job {submission.job_id} ended {state}; see {submission.stdout}", file=sys.stderr)
            return 0 if state == "COMPLETED" else 1
        time.sleep(poll_s)


def _queued(job_id: str) -> bool:
    out = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"])
    return out.returncode == 0 and bool(out.stdout.strip())
