"""Autoscaling (issue 22): the shipped cluster templates' autoscaler settings, on Ray's fake multi-node provider.

Ray's fake multi-node provider (``provider: {type: fake_multinode}``) starts each worker node the
autoscaler asks for as a local Ray node (a raylet and its agents on this host, joined to the head's GCS)
and stops it when the autoscaler terminates it. So the autoscaler is Ray's own, on the head as on a real
cluster, with a template's settings: only the node provider is fake. Ray 2.60 runs autoscaler v2 for
both kinds of template (``ray up`` since Ray 2.50; a KubeRay head since 2.48, unless
``RAY_enable_autoscaler_v2=0``); v1 is the opt-out. Both autoscalers are covered, one template each:

* ``aws-gpu.yaml`` on autoscaler v2;
* ``kuberay.yaml`` on autoscaler v1, its settings derived from the RayCluster by Ray's own KubeRay code.

A template's worker type (8 CPUs + 1 GPU, up to 4 of them) becomes 1-CPU nodes, up to 2 of them: two
1-CPU trials fit this 2-core machine, and a sweep that wants 2 trials at once needs a node more than
``min_workers`` gives it. ``min_workers`` and ``upscaling_speed`` are the template's;
``idle_timeout_minutes`` is shortened (``IDLE_TIMEOUT_MIN``); nothing else is. Outside the templates,
the autoscaler's loop runs every 2 s instead of Ray's default 5 s (``UPDATE_INTERVAL_S``).

docs/autoscaling.md says what this proves and what it does not.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from test_sweep_e2e import Sweep, _env, _results, _write_spec  # noqa: E402

pytestmark = pytest.mark.slow

TEMPLATES = Path(__file__).resolve().parents[1] / "launch" / "templates"
# This machine (2 cores, shared) holds two 1-CPU worker nodes beside the head; the templates allow 4.
WORKER_CAP = 2
# The templates idle a node out after 10 minutes (aws-gpu.yaml) and 1 minute (kuberay.yaml: KubeRay's
# default); 0.25 min (15 s: 40x and 4x shorter) keeps each test near a minute and a half. It must stay
# longer than a node's gap between two trials (a trial ends, Tune starts the next on the freed CPU: a
# second or two, more under load), or the autoscaler could take a node back in the middle of a sweep
# only to add it again for the next pending trial.
IDLE_TIMEOUT_MIN = 0.25
# The autoscaler's loop period: Ray's default is 5 s, its own fake-cluster tests use 1 s. 2 s here: each
# scale-up and scale-down decision comes up to that much later (a real head's up to 5 s; docs/autoscaling.md)
UPDATE_INTERVAL_S = 2
# Ray's fake provider names the head's node type and id so (ray/autoscaler/_private/fake_multi_node/node_provider.py)
HEAD_TYPE = "ray.head.default"
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
# Ray 2.60's wheel lacks the fake provider's defaults file (fake_multi_node/example.yaml), which autoscaler
# v2 reads at start (prepare_config -> fillout_defaults -> providers._get_default_config) and exits with
# FileNotFoundError. v1 never reads it. For v2, the head's monitor process (and only it) is pointed at a
# defaults file of ours: our config itself, complete, so the defaults add nothing.
V2_DEFAULTS_SHIM = """\
import sys
if any(a.endswith("autoscaler/v2/monitor.py") for a in sys.orig_argv):
    import os
    import ray.autoscaler._private.providers as providers
    providers._DEFAULT_CONFIGS["fake_multinode"] = lambda: os.environ["PAH_FAKE_MULTINODE_DEFAULTS"]
"""


def launcher_settings(name: str) -> dict:
    """A cluster-launcher template (``ray up``'s YAML) as the autoscaler reads it."""
    return yaml.safe_load((TEMPLATES / name).read_text())


def kuberay_settings(name: str) -> dict:
    """The autoscaler config KubeRay's in-tree autoscaler derives from the template's RayCluster."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = next(d for d in yaml.safe_load_all((TEMPLATES / name).read_text()) if d and d.get("kind") == "RayCluster")
    cr = copy.deepcopy(cr)
    cr["metadata"].setdefault("namespace", "default")  # kubectl apply's default
    return _derive_autoscaling_config_from_ray_cr(cr)


def fake_autoscaler_config(settings: dict, gcs_address: str, *, v2: bool) -> dict:
    """``settings``' autoscaler settings, for fake 1-CPU worker nodes joining the GCS at ``gcs_address``."""
    head = settings["head_node_type"]
    assert settings["available_node_types"][head]["resources"].get("CPU") == 0, "the head runs no trials"
    types: dict[str, dict] = {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, t in settings["available_node_types"].items():
        if name != head:
            types[name] = {"resources": {"CPU": 1}, "node_config": {}, "min_workers": t.get("min_workers", 0),
                           "max_workers": min(t["max_workers"], WORKER_CAP)}
    # the fake nodes join this GCS (the provider's default is port 6379 of this host: someone else's, maybe);
    # they share one IP, so the autoscaler tells them apart by node id
    provider = {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                "disable_launch_config_check": True, "disable_node_updaters": True}
    if v2:  # as Ray's AutoscalingCluster sets it up for v2
        provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
    return {
        "cluster_name": f"{settings['cluster_name']}-fake",
        "max_workers": min(settings["max_workers"], WORKER_CAP),
        "upscaling_speed": settings["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": provider, "auth": {}, "docker": {},
        "available_node_types": types, "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A free port not handed out before in this process: the two clusters, started together, share none."""
    from launch.cluster import free_port

    while (port := free_port()) in _GIVEN:
        pass
    _GIVEN.add(port)
    return port


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (every process of our cluster names its temp dir)."""
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


class FakeCluster:
    """A head (0 CPUs, the autoscaler, the GCS on a port of its own) started with ``ray start --block``."""

    def __init__(self, config: dict, workdir: Path, *, v2: bool):
        self.config = config
        self.v2 = v2
        self.temp_dir = Path(tempfile.mkdtemp(prefix="pahray_as_", dir="/tmp"))  # unix socket paths < 107 bytes
        self.address = config["provider"]["gcs_address"]
        self.log = workdir / "head.log"
        cfg = workdir / "autoscaler.yaml"
        cfg.write_text(yaml.safe_dump(config))
        env = _env(RAY_AUTH_MODE="disabled", RAY_FAKE_CLUSTER="1", RAY_enable_autoscaler_v2="1" if v2 else "0",
                   AUTOSCALER_UPDATE_INTERVAL_S=str(UPDATE_INTERVAL_S),
                   # the fake nodes' raylets start the trials: at the user's priority, as pah sweep's own Ray
                   RAY_worker_niceness="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   # the head's node id, as the fake provider names it (`ray start` under RAY_FAKE_CLUSTER sets
                   # it for the head's own processes too): the autoscaler matches nodes to the GCS's by id
                   RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID)
        if v2:
            shim = workdir / "v2shim"
            shim.mkdir()
            (shim / "sitecustomize.py").write_text(V2_DEFAULTS_SHIM)
            env.update(RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_NODE_TYPE_NAME=HEAD_TYPE,
                       PAH_FAKE_MULTINODE_DEFAULTS=str(cfg),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")])))
        self.env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        port = self.address.rsplit(":", 1)[1]
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--disable-usage-stats",
               f"--autoscaling-config={cfg}", f"--port={port}", "--node-ip-address=127.0.0.1",
               "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
               f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
               "--min-worker-port=0", "--max-worker-port=0"]
        self._f = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        self._gcs = None

    def workers(self) -> dict[str, str]:
        """Alive worker nodes: {node id (hex): IP}, read from the GCS."""
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        if self._gcs is None:
            from ray._raylet import GcsClient

            self._gcs = GcsClient(address=self.address)
        nodes = self._gcs.get_all_node_info(timeout=10, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
        return {n.node_id.hex(): n.node_manager_address for n in nodes.values() if not n.is_head_node}

    def wait_until(self, cond, timeout: float, what: str):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, f"the head ended:\n{self.tail()}"
            try:
                got = cond(self.workers())
            except Exception:  # the GCS not up yet
                got = None
            if got:
                return got
            time.sleep(0.5)
        pytest.fail(f"not within {timeout:.0f} s: {what}; workers {self.workers()}\n{self.tail()}")

    def tail(self) -> str:
        logs = [self.log, *sorted(self.temp_dir.glob("session_latest/logs/monitor.*"))]
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs if p.exists())

    def monitor_log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.temp_dir.glob("session_latest/logs/monitor.log"))

    def stop(self) -> None:
        """SIGTERM the head's `ray start` (it stops its node), then SIGKILL what is left of ours: the fake
        worker nodes (the autoscaler's children) and anything else naming our temp dir. Never `ray stop`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            targets = [(os.killpg, self.proc.pid)] + [(os.kill, pid) for pid in _pids_naming(str(self.temp_dir))]
            for kill, pid in targets:
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if self.proc.poll() is None:
                self.proc.wait()
            time.sleep(0.5)
            if not _pids_naming(str(self.temp_dir)):
                break
        self._f.close()
        for p in self.temp_dir.glob("session_latest/logs/monitor.*"):  # kept with the test's files
            shutil.copy(p, self.log.parent / p.name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _fake_provider_missing() -> str | None:
    """Why Ray's fake multi-node provider cannot run here, or None."""
    try:
        from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider  # noqa: F401
        from ray.autoscaler._private.providers import _NODE_PROVIDERS
    except ImportError as e:
        return f"Ray's fake multi-node provider cannot be imported: {e}"
    if "fake_multinode" not in _NODE_PROVIDERS:
        return "this Ray has no fake_multinode node provider"
    if not Path(sys.executable).with_name("ray").exists():
        return f"no `ray` command beside {sys.executable}"
    return None


#: the two cases: (template, how the autoscaler reads it, autoscaler v2?)
CASES = {"aws-gpu-autoscaler-v2": ("aws-gpu.yaml", launcher_settings, True),
         "kuberay-autoscaler-v1": ("kuberay.yaml", kuberay_settings, False)}


def test_template_autoscalers_add_workers_for_pending_trials_and_remove_them_when_idle(request, tmp_path):
    """Both cases at once, each its own fake cluster and sweep (``_scales``): most of each is waiting (for the
    autoscaler's loop, a node's start, the idle timeout), so together they take about the time of one."""
    reason = _fake_provider_missing()
    if reason:
        pytest.skip(reason)
    clusters = {}
    for case, (name, read, v2) in CASES.items():
        (tmp_path / case).mkdir()
        config = fake_autoscaler_config(read(name), f"127.0.0.1:{_free_port()}", v2=v2)
        clusters[case] = FakeCluster(config, tmp_path / case, v2=v2)
        request.addfinalizer(clusters[case].stop)
    with ThreadPoolExecutor(max_workers=len(clusters)) as pool:
        runs = {case: pool.submit(_scales, c, tmp_path / case) for case, c in clusters.items()}
    said = {}
    for case, run in runs.items():
        try:
            print(run.result())
        except BaseException as e:  # pytest.fail's Failed is a BaseException
            said[case] = f"{type(e).__name__}: {e}"
    assert not said, "\n\n".join(f"[{case}] {what}" for case, what in said.items())


def _scales(cluster: FakeCluster, tmp_path: Path) -> str:
    """0-CPU head, the template's min_workers up before any demand; a sweep of 4 one-CPU trials, 2 at a
    time: the trial that cannot start makes the autoscaler add a node, trials run there, every trial
    finishes; once idle for idle_timeout (and not before), the added node goes and min_workers stay.
    Returns what it saw, in a line."""
    t0 = time.monotonic()
    (worker_type,) = (n for n in cluster.config["available_node_types"] if n != HEAD_TYPE)
    lo = cluster.config["available_node_types"][worker_type]["min_workers"]
    hi = cluster.config["available_node_types"][worker_type]["max_workers"]
    assert hi > lo, "the template must let the autoscaler add a node"
    idle_s = IDLE_TIMEOUT_MIN * 60

    # before any demand: the autoscaler brings the workers to min_workers, and no further
    before = cluster.wait_until(lambda w: [w] if len(w) == lo else None, 120, f"{lo} worker node(s) (min_workers)")[0]
    up_s = time.monotonic() - t0
    time.sleep(UPDATE_INTERVAL_S + 1)
    assert cluster.workers().keys() == before.keys(), "a node was added or removed with nothing pending"

    # 4 trials, 2 at a time, 1 CPU each: beyond min_workers' CPUs one waits, and only the autoscaler can place
    # it. A trial must outlast a node's start (~8 s here quiet: the autoscaler's next loop, `ray start`, the
    # node registering), or the waiting trial takes the CPU its predecessor frees on the old node and the
    # new one stays empty. At 2 epochs a task a trial took 1-2 s on a quiet machine and that happened
    # (2 runs in 2); at 10, ~15 s for the first trial (its worker imports torch), 3-7 s for later ones.
    spec = _write_spec(tmp_path / "as.yaml", set={"train.epochs_per_task": 10},
                       space={"train.lr": {"loguniform": [0.001, 0.005]}}, searcher="random", num_samples=4,
                       scheduler="none", max_failures=0)
    seen: dict[str, float] = {}  # worker node id -> seconds into the sweep when first seen alive
    gone: dict[str, float] = {}  # worker node id -> wall-clock time when no longer alive
    s0 = time.monotonic()
    run = Sweep([str(spec), "--storage", str(tmp_path), "--name", "as", "--address", cluster.address], tmp_path,
                tmp_path / "sweep.txt", env=_env(RAY_AUTH_MODE="disabled"))

    def watch() -> dict[str, str]:
        alive = cluster.workers()
        assert len(alive) <= hi, alive  # never past the (capped) max_workers
        for node in alive:
            seen.setdefault(node, time.monotonic() - s0)
        for node in seen.keys() - alive.keys() - gone.keys():
            gone[node] = time.time()
        return alive

    try:
        while run.proc.poll() is None:
            assert time.monotonic() - s0 < 240, "pah sweep did not end in 240 s:\n" + run.log.read_text()[-3000:]
            watch()
            time.sleep(0.5)
        rc, out = run.wait(timeout=10)
    finally:
        run.close()
    sweep_s = time.monotonic() - s0
    assert rc == 0, out[-4000:]
    results = _results(tmp_path / "as", "search")
    assert len(results) == 4 and all("avg_acc" in r["metrics"] for r in results.values()), out[-3000:]

    added = {n: at for n, at in seen.items() if n not in before}
    assert added, f"no worker node added while a trial was pending; seen {seen}\n{cluster.tail()}"
    ran_on = {tid: r["env"]["node_id"] for tid, r in results.items()}
    assert set(ran_on.values()) <= set(seen), (ran_on, seen)  # every trial on a worker node, none on the head
    assert set(ran_on.values()) & set(added), (ran_on, added)  # and some on a node added for them

    # idle: back to min_workers, each removed node idle for idle_timeout first. Its idle time starts
    # when its last trial ends (its result.json written just before); the bound above adds the
    # autoscaler's loop period and a margin for a busy machine.
    d0 = time.monotonic()
    limit = idle_s + 2 * UPDATE_INTERVAL_S + 30
    cluster.wait_until(lambda w: len(watch()) == lo, limit, f"back to {lo} worker node(s) once idle")
    down_s = time.monotonic() - d0
    assert len(gone) == len(seen) - lo, (seen, gone)
    for node, at in gone.items():
        ends = [(tmp_path / "as" / "trials" / "search" / tid / "result.json").stat().st_mtime
                for tid, n in ran_on.items() if n == node]
        idle_from = max(ends, default=s0 - time.monotonic() + time.time() + seen[node])
        assert idle_s - 1 <= at - idle_from <= limit, (node, at - idle_from)  # not before its idle timeout
    # each removed by the autoscaler as idle: its line for the node, written before the node is stopped
    # (v1: "Terminating the node with id N ... (idle)"; v2: "... cloud_instance_id=N ...: draining ray: idle for")
    log = cluster.monitor_log()
    for node in gone:
        said = rf"Terminating the node with id {node}\b.*\(idle\)|cloud_instance_id={node}\b.*draining ray: idle for"
        assert re.search(said, log), (node, log[-3000:])
    per_node = sorted(list(ran_on.values()).count(n) for n in set(ran_on.values()))
    return (f"fake autoscaling, v{2 if cluster.v2 else 1} ({worker_type}: min {lo}, max {hi}; "
            f"upscaling_speed {cluster.config['upscaling_speed']}; idle {idle_s:.0f} s): min_workers up in {up_s:.0f} s; sweep {sweep_s:.0f} s, node(s) added "
            f"{', '.join(f'{s:.0f}' for s in added.values())} s into it, trials per node {per_node}; min_workers again "
            f"{down_s:.0f} s after it; test {time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
