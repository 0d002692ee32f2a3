"""Bring up a Ray cluster inside a job allocation: one Ray node per task, rank 0 the head.

Each node is a ``ray start --block`` subprocess in its own session, so it can be stopped
as a group without touching any other Ray on the host (never ``ray stop``). What Ray's
Slurm users trip over is avoided by construction (see docs/slurm.md):

* every port is chosen free on the node, per job; worker ports come from the OS;
* every node has its own short temp dir, ``/tmp/pahray_<job>_<rank>`` (unix sockets
  must stay under ~107 characters), never the shared ``/tmp/ray``;
* addresses are explicit: the head writes ``ip:port`` to a file on the shared storage and
  the workers and the driver connect to exactly that, never ``address="auto"``;
* CPUs, GPUs and memory come from the allocation (``--num-cpus/--num-gpus`` explicit),
  not from what Ray sees on the host.

Stdlib only at import time; Ray is imported where it is used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RayNode", "ray_env", "allocated_cpus", "allocated_gpus", "allocated_memory", "free_port",
           "wait_for_file", "wait_for_nodes", "write_json"]

# Start-up bounds: generous for slow shared filesystems and cold Python imports.
HEAD_START_S = 180.0
JOIN_S = 300.0


def ray_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for every Ray process of a launched cluster and for its driver.

    Ray 2.60 switches to token auth once ``~/.ray/auth_token`` exists (``ray.init()``
    writes one); a head and a driver that disagree fail after a 20 s wait. So the mode
    is always explicit: the user's ``RAY_AUTH_MODE`` if set (then it is theirs to
    provide the token on every node), else ``disabled``.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # A worker started on the head's host must not think it may reuse a local cluster.
    env.pop("RAY_ADDRESS", None)
    return env


def free_port() -> int:
    """A TCP port that is free on this node now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """The address other nodes reach this one at (``PAH_RAY_NODE_IP`` overrides)."""
    if os.environ.get("PAH_RAY_NODE_IP"):
        return os.environ["PAH_RAY_NODE_IP"]
    from ray.util import get_node_ip_address

    return str(get_node_ip_address())


def _ray_client_installed() -> bool:
    from ray._private.utils import get_ray_client_dependency_error

    return get_ray_client_dependency_error() is None


def allocated_cpus(default: int) -> int:
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or default)


def allocated_gpus(default: int) -> int:
    """GPUs this task may use: CUDA_VISIBLE_DEVICES as SLURM set it, else the request."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd not in ("", "NoDevFiles"):
        return len([d for d in cvd.split(",") if d.strip()])
    if cvd == "NoDevFiles":  # SLURM without a gres for this job: no GPU
        return 0
    return int(os.environ.get("SLURM_GPUS_ON_NODE") or default)


def allocated_memory(tasks_per_node: int) -> int | None:
    """Bytes of memory this task was allotted, if SLURM says; None when unknown."""
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node:
        return int(per_node) * 2**20 // max(1, tasks_per_node)
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if per_cpu and cpus:
        return int(per_cpu) * int(cpus) * 2**20
    return None


def write_json(path: Path, data: dict) -> None:
    """Atomic write (temp file + rename): readers on other nodes never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def wait_for_file(path: Path, *, timeout_s: float, alive=lambda: True) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"gave up waiting for {path}: the process it depends on exited")
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.5)
    raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")


@dataclass
class RayNode:
    """One ``ray start --block`` process: the head (``address=None``) or a worker."""

    temp_dir: Path
    log_path: Path
    num_cpus: int
    num_gpus: int
    memory_bytes: int | None = None
    address: str | None = None  # the head's ip:port; None starts a head
    dashboard: bool = False
    proc: subprocess.Popen | None = None
    ip: str = ""
    port: int = 0

    def command(self) -> list[str]:
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
        self.ip = node_ip()
        cmd += [
            "start", "--block", "--disable-usage-stats",
            f"--node-ip-address={self.ip}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}",
            # Every listening port explicit and free here, so two jobs (or two of our
            # nodes) on one host never collide; worker processes take OS-assigned ports.
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
        ]
        if self.memory_bytes:
            store = max(100 * 2**20, int(self.memory_bytes * 0.3))
            cmd += [f"--object-store-memory={store}", f"--memory={max(self.memory_bytes - store, 2**28)}"]
        if self.address is None:
            self.port = free_port()
            cmd += ["--head", f"--port={self.port}"]
            if _ray_client_installed():  # else Ray starts no client server (and refuses the flag)
                cmd += [f"--ray-client-server-port={free_port()}"]
            if self.dashboard:  # loopback only: reach it with ssh -L
                cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]
            else:
                cmd += ["--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        return cmd

    def start(self, *, timeout_s: float = HEAD_START_S) -> RayNode:
        """Start the node and return once Ray says it runs (bounded; log tail on failure)."""
        if self.temp_dir.exists():  # a previous run of this job (requeue): its processes are gone
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=ray_env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self._tail()}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ray start did not come up within {timeout_s:.0f} s:\n{self._tail()}")

    @property
    def head_address(self) -> str:
        return f"{self.ip}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop this node's processes only: its ``ray start`` and its session (process group).

        SIGTERM goes to ``ray start`` alone: it drains the node and stops its children in
        order (~2 s). A signal to the whole group would kill the GCS first and leave it
        waiting for the GCS. Whatever is left after ``grace_s`` is killed with the group.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # raylet & co. may outlive `ray start` a moment; they share its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def wait_for_nodes(expected: int, *, timeout_s: float = JOIN_S, alive=lambda: True) -> dict:
    """Block until ``expected`` Ray nodes are alive (``ray`` must be initialised); returns a summary."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) >= expected:
            res = ray.cluster_resources()
            return {"nodes": len(nodes), "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
                    "node_ips": sorted(n["NodeManagerAddress"] for n in nodes)}
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} Ray nodes joined within {timeout_s:.0f} s")
        if not alive():
            raise RuntimeError("the Ray head exited while waiting for the workers")
        time.sleep(1.0)
