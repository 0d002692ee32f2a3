"""A multi-node Ray cluster on this host, for tests: one network namespace per node (.ci/netns-cluster.sh).

``NetnsCluster.start(n_workers, env=...)`` brings up an S3 server (a node of its own), a head (GCS,
dashboard) and ``n_workers`` Ray workers, each in its own network and mount namespace with a private /tmp;
``stop()`` removes all of it and is safe to call twice. A cluster whose test process died
without stopping it (SIGKILL) is removed by the next ``start``. See docs/cloud.md.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NetnsCluster", "unavailable", "SCRIPT"]

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "netns-cluster.sh"
#: where the clusters of this helper keep their state: BASE/ID, one per bridge pahbrID
BASE = Path("/tmp/pah-netns")


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if os.geteuid() != 0:
        return "the netns cluster needs root (network namespaces, a bridge, tmpfs mounts); CI runs as root"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the netns cluster needs `{tool}` (iproute2, util-linux)"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns` is not available here: {r.stderr.strip()[:200]}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bridge_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


@dataclass
class NetnsCluster:
    dir: Path
    id: int
    head_ip: str
    dashboard: str
    s3_endpoint: str
    workers: dict[str, str] = field(default_factory=dict)  # wK -> its address
    start_s: float = 0.0
    notes: str = ""  # what the script said on stderr (a node started again, ...)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # what every node's processes get

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def start(cls, n_workers: int, *, env: dict[str, str], timeout: float = 300) -> NetnsCluster:
        """A cluster on the first free bridge pahbr0, pahbr1, ...; ``env`` reaches every node's processes."""
        t0 = time.monotonic()
        BASE.mkdir(parents=True, exist_ok=True)
        for cid in range(64):
            d = BASE / str(cid)
            owner = d / "owner"
            if _bridge_exists(f"pahbr{cid}"):
                try:
                    pid = int(owner.read_text())
                except (OSError, ValueError):
                    continue  # not one of ours (or not yet written): leave it
                if _alive(pid):
                    continue
                _run("stop", d)  # left by a test process that died without stopping it
            elif (d / "cluster.env").exists():
                _run("stop", d)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            owner.write_text(f"{os.getpid()}\n")
            r = subprocess.run(["bash", str(SCRIPT), "start", str(d), str(n_workers)], capture_output=True,
                               text=True, env={**env, "PAH_NETNS_ID": str(cid)}, timeout=timeout)
            if r.returncode != 0 and "exists (another cluster" in r.stderr:
                continue  # taken between our look and our start
            if r.returncode != 0:
                raise RuntimeError(f"netns-cluster.sh start failed ({r.returncode}):\n{r.stderr[-3000:]}")
            lines = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
            workers = dict(w.split("=") for w in shlex.split(lines["WORKERS"])[0].split())
            cluster = cls(dir=d, id=cid, head_ip=lines["HEAD_IP"], dashboard=lines["DASHBOARD"],
                          s3_endpoint=lines["S3_ENDPOINT"],
                          workers={ns.split("-", 1)[1]: ip for ns, ip in workers.items()},
                          start_s=time.monotonic() - t0, notes=r.stderr.strip(), env=dict(env))
            atexit.register(cluster.stop)  # also when the test process ends without running the finalizer
            return cluster
        raise RuntimeError(f"no free bridge pahbr0..63 for a netns cluster (see {BASE})")

    @staticmethod
    def address_of(cid: int) -> tuple[str, str]:
        """(head address, S3 endpoint) the cluster on bridge pahbr``cid`` will have (to put in its nodes' env)."""
        return f"10.77.{cid}.2", f"http://10.77.{cid}.254:9000"

    def stop(self) -> None:
        """SIGKILL every process of every node, delete the namespaces, veths and bridge (idempotent)."""
        if (self.dir / "cluster.env").exists():
            _run("stop", self.dir)
        atexit.unregister(self.stop)

    # ------------------------------------------------------------------ nodes
    def ns(self, node: str) -> str:
        return f"pah{self.id}-{node}"

    def pids(self, node: str) -> set[int]:
        r = subprocess.run(["ip", "netns", "pids", self.ns(node)], capture_output=True, text=True)
        return {int(p) for p in r.stdout.split()}

    def kill(self, node: str) -> set[int]:
        """SIGKILL every process in ``node``'s namespace, as a spot reclaim does; returns their pids."""
        pids = self.pids(node)
        _run("kill", self.dir, node)
        return pids

    def add_worker(self, node: str, timeout: float = 180, env: dict[str, str] | None = None) -> str:
        """Start worker ``node`` (``wK``): a node joining the cluster, or a lost one replaced, with the
        environment the others got and ``env`` (e.g. ``PAH_NETNS_S3_ENDPOINT``); returns its address once
        its raylet has registered with the GCS."""
        self._script("worker", node, timeout=timeout, env=env)
        self.workers[node] = f"10.77.{self.id}.{int(node[1:]) + 2}"  # the script's addresses: head .2, wK .K+2
        return self.workers[node]

    def add_workers(self, *nodes: str, timeout: float = 180) -> list[str]:
        """``add_worker`` for each of ``nodes`` at once (as the initial ``start`` does): nodes that join together."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            return list(pool.map(lambda n: self.add_worker(n, timeout=timeout), nodes))

    def fresh_head(self, timeout: float = 180) -> None:
        """The head's namespace deleted with every process and file in it, made anew at the same address,
        and a new Ray head (GCS, dashboard) started there: a lost head replaced. The S3 server, a node of
        its own, keeps the bucket; the workers are the caller's (kill them and ``add_worker`` them again:
        a worker of the old head does not join a new one)."""
        self._script("head", timeout=timeout)

    def cut(self, node: str) -> None:
        """``node``'s link to the bridge down: a partition; its processes run on, unreachable."""
        self._script("cut", node)

    def heal(self, node: str) -> None:
        self._script("heal", node)

    def _script(self, cmd: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> None:
        r = subprocess.run(["bash", str(SCRIPT), cmd, str(self.dir), *args], capture_output=True, text=True,
                           env={**self.env, **(env or {}), "PAH_NETNS_ID": str(self.id)}, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"netns-cluster.sh {cmd} {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")

    def sh(self, node: str, command: str) -> subprocess.CompletedProcess:
        """``command`` inside ``node``: its network and its mount namespace (its private /tmp)."""
        raylet = next((p for p in sorted(self.pids(node)) if _comm(p) == "raylet"), None)
        if raylet is None:
            raise RuntimeError(f"no raylet in {self.ns(node)}")
        return subprocess.run(["nsenter", "-t", str(raylet), "-n", "-m", "sh", "-c", command],
                              capture_output=True, text=True, timeout=30)

    def log(self, node: str) -> str:
        try:
            return (self.dir / "logs" / f"{node}.log").read_text(errors="replace")
        except OSError:
            return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _run(cmd: str, d: Path, *args: str) -> None:
    r = subprocess.run(["bash", str(SCRIPT), cmd, str(d), *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"netns-cluster.sh {cmd} {d} failed ({r.returncode}): {r.stderr[-2000:]}")
