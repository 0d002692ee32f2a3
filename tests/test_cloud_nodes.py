"""Cloud nodes for real (issue 22, first slice): a Ray cluster of network namespaces on this host.

One cluster for the module (tests/netns_cluster.py, .ci/netns-cluster.sh): a head (GCS, dashboard,
the Ray Job's driver, moto's S3 server) and two workers with 1 CPU each, every node its own network
namespace on a private bridge with its own /tmp; no node shares a file with another, so a trial
moves between nodes only through the bucket. The sweeps are submitted from this host as a cloud
user would: ``pah launch ray SPEC --address http://HEAD:8265 --storage s3://...``.

The worker node lost comes after the sweep across both workers, and the node joining last: it
starts with the one worker the loss left, and adds a third.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from netns_cluster import NetnsCluster, unavailable

from conftest import check_wandb_runs

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")
pytest.importorskip("moto")
pafs = pytest.importorskip("pyarrow.fs")

from test_sweep_e2e import _env, _in_optuna_db, _log_lines, _results, _write_spec  # noqa: E402

pytestmark = pytest.mark.slow

BUCKET = "pah-cloud"
KEY_ID, SECRET = "AKIAPAHCLOUD00000000", "pah-cloud-secret-0123456789abcdef"
# Ray's node-death detection, shortened for the test (docs/cloud.md): the GCS checks each raylet every
# second and declares its node dead after 5 failed checks in a row (Ray's defaults: 3 s and 5, ~15-30 s)
HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
          "RAY_health_check_failure_threshold": "5"}
TRAINED = re.compile(r"pid=(\d+) trained task (\d+)/(\d+)")
STARTED = re.compile(r"pid=(\d+) start tasks_done=(\d+)")


def _creds() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def cloud():
    """(cluster, its bucket's filesystem). Skips, with the reason, where namespaces cannot be made (not root)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    from ray._private.utils import get_dashboard_dependency_error

    if get_dashboard_dependency_error():
        pytest.skip(f"the Ray Jobs API needs ray[default] ({get_dashboard_dependency_error()})")
    # what the nodes' image and instance profile give them: credentials, Ray's settings, 1 thread a trial
    node_env = {k: v for k, v in _env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1").items()
                if not k.startswith("AWS_")}
    cluster = NetnsCluster.start(2, env={**node_env, **_creds(), **HEALTH})
    try:
        fs = pafs.S3FileSystem(endpoint_override=cluster.s3_endpoint, scheme="http", region="us-east-1",
                               access_key=KEY_ID, secret_key=SECRET, allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        print(f"netns cluster up in {cluster.start_s:.0f} s: head {cluster.head_ip}, workers {cluster.workers}\n"
              f"{cluster.notes}")
        yield cluster, fs
    finally:
        cluster.stop()


def _client_env(cluster: NetnsCluster) -> dict[str, str]:
    """The submitting user's environment, on this host: it reaches the cluster through the bridge."""
    env = {k: v for k, v in _env().items() if not k.startswith("AWS_")}
    return {**env, **_creds(), "AWS_ENDPOINT_URL": cluster.s3_endpoint, "RAY_AUTH_MODE": "disabled"}


def _launch(cluster: NetnsCluster, spec: Path, name: str, log: Path, request) -> subprocess.Popen:
    """``pah launch ray`` in a session of its own, killed when the test ends however it ends (Ctrl-C too)."""
    cmd = [sys.executable, "-m", "pah", "launch", "ray", str(spec), "--address", cluster.dashboard,
           "--storage", f"s3://{BUCKET}/sweeps", "--name", name]
    proc = subprocess.Popen(cmd, cwd=spec.parent, env=_client_env(cluster), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)

    def end() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()

    request.addfinalizer(end)
    return proc


def _files(fs, prefix: str) -> list[str]:
    sel = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return [i.path[len(prefix) + 1:] for i in fs.get_file_info(sel) if i.type == pafs.FileType.File]


def _read(fs, path: str) -> str:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _local_copy(fs, prefix: str, dest: Path) -> Path:
    """The sweep as the bucket holds it, in a local folder (for the helpers that read a sweep dir)."""
    pafs.copy_files(prefix, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def _wait(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"pah launch ray did not end within {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    return log.read_text()


def _tiny_spec(path: Path, epochs: int) -> Path:
    return _write_spec(path, set={"train.epochs_per_task": epochs}, space={"train.lr": {"loguniform": [0.001, 0.005]}},
                       searcher="optuna-tpe", num_samples=4, scheduler="none", max_failures=2,
                       wandb={"mode": "offline"})


# --------------------------------------------------------------------------- the nodes


def test_nodes_share_no_files_and_no_route_out(cloud):
    cluster, _ = cloud
    mark = "/tmp/pah-netns-isolation-mark"
    assert cluster.sh("w1", f"echo w1 > {mark} && cat {mark}").stdout.strip() == "w1"
    for other in ("w2", "head"):
        r = cluster.sh(other, f"test -e {mark}")
        assert r.returncode == 1, (other, r)  # w1's /tmp is w1's alone
    assert not Path(mark).exists()  # and not the host's
    for node in ("head", "w1", "w2"):
        routes = subprocess.run(["ip", "-n", cluster.ns(node), "route", "show"], capture_output=True,
                                text=True).stdout.splitlines()
        # no default route: a node reaches its subnet (the other nodes, the host's bridge address) and nothing else
        assert routes and all(r.startswith(f"10.77.{cluster.id}.0/24 ") for r in routes), (node, routes)


# --------------------------------------------------------------------------- a sweep across the workers


def test_launch_ray_spreads_trials_over_worker_nodes(cloud, tmp_path, request):
    cluster, fs = cloud
    t0 = time.monotonic()
    log = tmp_path / "out.txt"
    out = _wait(_launch(cluster, _tiny_spec(tmp_path / "spread.yaml", epochs=1), "spread", log, request), log, 240)
    assert "state: SUCCEEDED" in out and f"sweep: s3://{BUCKET}/sweeps/spread" in out, out[-4000:]
    prefix = f"{BUCKET}/sweeps/spread"
    results = [json.loads(_read(fs, f"{prefix}/{rel}")) for rel in _files(fs, prefix)
               if rel.startswith("trials/search/") and rel.endswith("/result.json")]
    assert len(results) == 4, out[-4000:]
    nodes = Counter(r["env"].get("node_ip") for r in results)
    # every trial on a worker (the head has no CPU for them), and both workers used
    assert set(nodes) <= set(cluster.workers.values()) and len(nodes) == 2, nodes
    assert all(len(r["acc_matrix"]) == 5 and 0 <= r["metrics"]["avg_acc"] <= 1 for r in results)
    print(f"sweep on {dict(nodes)}: {time.monotonic() - t0:.0f} s")


# --------------------------------------------------------------------------- a worker node lost mid-trial


def test_worker_node_lost_mid_trial_nothing_lost(cloud, tmp_path, request):
    """Every process of worker w2 SIGKILLed (a spot reclaim) while a trial there is mid-way, its task
    checkpoints in the bucket: the sweep ends normally, the trial continues on w1 from its last task
    checkpoint, at most the task in progress is trained again, it ends with the accuracy matrix of an
    uninterrupted run, and optuna.db and the W&B runs hold every trial once."""
    cluster, fs = cloud
    t0 = time.monotonic()
    name, lost = "lost", "w2"
    prefix = f"{BUCKET}/sweeps/{name}"
    log = tmp_path / "out.txt"
    epochs = 2  # a task takes ~2 s on a worker: room to kill mid-trial, between two task checkpoints
    proc = _launch(cluster, _tiny_spec(tmp_path / f"{name}.yaml", epochs=epochs), name, log, request)

    def checkpointed(tid: str, files: list[str]) -> int:
        """Tasks in the newest task checkpoint of trial ``tid`` in the bucket."""
        metas = [rel for rel in files if rel.startswith("tune/search/") and f"_{tid}_" in rel
                 and rel.endswith("/meta.json")]
        return max((json.loads(_read(fs, f"{prefix}/{m}") or "{}").get("tasks_completed", 0) for m in metas),
                   default=0)

    def mid_trial_on_lost_node():
        files = _files(fs, prefix)
        on_lost = cluster.pids(lost)
        for rel in files:
            if not (rel.startswith("trials/search/") and rel.endswith("/log.txt")):
                continue
            tid = rel.split("/")[2]
            if f"trials/search/{tid}/result.json" in files:
                continue
            lines = _read(fs, f"{prefix}/{rel}").splitlines()
            starts = [i for i, ln in enumerate(lines) if STARTED.search(ln)]
            if not starts or int(STARTED.search(lines[starts[-1]]).group(1)) not in on_lost:
                continue
            # 2 or 3 tasks trained in this attempt: Tune has the report of the task before the last (the
            # trial went on past it), and 2 tasks to go leave time to kill before the trial ends
            trained = sum(1 for ln in lines[starts[-1]:] if TRAINED.search(ln))
            if trained in (2, 3) and checkpointed(tid, files) >= 1:
                return tid
        return None

    victim = None
    while time.monotonic() - t0 < 180 and proc.poll() is None and not (victim := mid_trial_on_lost_node()):
        time.sleep(0.3)
    if victim is None:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"never saw a trial on {lost} with a task checkpoint:\n{log.read_text()[-4000:]}")
    killed = cluster.kill(lost)
    t_kill = time.monotonic()
    files = _files(fs, prefix)
    finished_before = {rel.split("/")[2] for rel in files if rel.startswith("trials/search/")
                       and rel.endswith("/result.json")}
    ckpt_at_kill = checkpointed(victim, files)
    # the victim's config and seed, uninterrupted, on this host (on the core the lost node leaves idle)
    params = json.loads(_read(fs, f"{prefix}/trials/search/{victim}/params.json"))
    sets = {"train.epochs_per_task": epochs, **params["params"], "seed": params["seed"]}
    ref = subprocess.Popen([sys.executable, "-m", "pah", "train", "split-digits-pah",
                            *(a for kv in sets.items() for a in ("--set", "=".join(map(str, kv)))),
                            "--out", str(tmp_path / "ref"), "--device", "cpu", "--no-progress"],
                           env=_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    request.addfinalizer(ref.kill)  # a no-op once it has ended

    out = _wait(proc, log, 240)
    after_kill_s = time.monotonic() - t_kill
    assert "state: SUCCEEDED" in out, out[-4000:]
    sweep = _local_copy(fs, prefix, tmp_path / "copy")
    results = _results(sweep, "search")
    assert len(results) == 4, out[-4000:]

    on_lost = set()
    for tid in results:
        lines = _log_lines(sweep / "trials" / "search" / tid)
        trained = Counter(int(m.group(2)) for ln in lines if (m := TRAINED.search(ln)))
        assert sorted(trained) == [1, 2, 3, 4, 5], (tid, lines)  # every task, in the end
        starts = [(int(m.group(1)), int(m.group(2))) for ln in lines if (m := STARTED.search(ln))]
        if tid in finished_before or not any(pid in killed for pid, _ in starts):
            # finished before the loss (maybe on the lost node: Tune reuses a worker process for the
            # next trial), or never there: each task trained once, and no start after the loss
            assert set(trained.values()) == {1} and len(starts) == 1, (tid, lines)
            continue
        on_lost.add(tid)
        # continued on the other node, from its last task checkpoint in the bucket, not from scratch
        last_on_lost = max(i for i, (pid, _) in enumerate(starts) if pid in killed)
        assert len(starts) > last_on_lost + 1, (tid, lines)
        resumed_pid, resumed_at = starts[last_on_lost + 1]
        assert resumed_pid not in killed
        # (the newest checkpoint may have reached the bucket before its report reached Tune: then it trains
        # that task again, and the task it had been training was not logged yet)
        assert resumed_at >= max(1, ckpt_at_kill - 1 if tid == victim else 0), (tid, ckpt_at_kill, lines)
        again = [k for k, n in trained.items() if n > 1]
        assert all(trained[k] == 2 for k in again) and again in ([], [resumed_at + 1]), (tid, lines)
        assert results[tid]["env"]["node_ip"] == cluster.workers["w1"]
    assert victim in on_lost
    _, err = ref.communicate(timeout=120)
    assert ref.returncode == 0, err
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert results[victim]["config_id"] == expected["config_id"] and results[victim]["seed"] == expected["seed"]
    assert results[victim]["acc_matrix"] == expected["acc_matrix"]  # as if the node had never been lost

    # the study and the W&B runs: each trial once, and complete
    ids = _in_optuna_db(sweep)
    assert len(ids) == len(set(ids)) and set(results) <= set(ids), ids
    assert check_wandb_runs(sweep, "search") == 4
    print(f"worker {lost} lost (trial {victim} at {ckpt_at_kill} tasks checkpointed): the sweep ended "
          f"{after_kill_s:.0f} s later; {time.monotonic() - t0:.0f} s in all")


# --------------------------------------------------------------------------- a worker node joining mid-sweep


def test_a_worker_node_joining_mid_sweep_gets_trials(cloud, tmp_path, request):
    """A sweep starts with one worker left (w1, 1 CPU: w2 was lost above, or is killed here), so its
    trials queue; a new node w3 joins once the first trial trains, as an autoscaler's or a user's new
    instance does, and the queued trials run there too. Nothing is lost or run twice."""
    cluster, fs = cloud
    if cluster.kill("w2"):  # w2 still up (the test above deselected): let Ray see it dead first
        time.sleep(10)
    t0 = time.monotonic()
    name = "join"
    prefix = f"{BUCKET}/sweeps/{name}"
    log = tmp_path / "out.txt"
    proc = _launch(cluster, _tiny_spec(tmp_path / f"{name}.yaml", epochs=2), name, log, request)
    while not any(rel.startswith("trials/search/") and rel.endswith("/log.txt") for rel in _files(fs, prefix)):
        if proc.poll() is not None or time.monotonic() - t0 > 180:
            pytest.fail(f"no trial started:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    joined = cluster.add_worker("w3")
    t_join = time.monotonic() - t0

    out = _wait(proc, log, 300)
    assert "state: SUCCEEDED" in out, out[-4000:]
    sweep = _local_copy(fs, prefix, tmp_path / "copy")
    results = _results(sweep, "search")
    assert len(results) == 4, out[-4000:]
    nodes = Counter(r["env"].get("node_ip") for r in results.values())
    assert set(nodes) <= {cluster.workers["w1"], joined} and nodes[joined] >= 1, nodes
    for tid in results:  # each trial trained each task once: none ran twice across the nodes
        lines = _log_lines(sweep / "trials" / "search" / tid)
        trained = Counter(int(m.group(2)) for ln in lines if (m := TRAINED.search(ln)))
        assert sorted(trained) == [1, 2, 3, 4, 5] and set(trained.values()) == {1}, (tid, lines)
    ids = _in_optuna_db(sweep)
    assert len(ids) == len(set(ids)) and set(results) <= set(ids), ids
    assert check_wandb_runs(sweep, "search") == 4
    print(f"w3 joined {t_join:.0f} s into the sweep; trials per node {dict(nodes)}; {time.monotonic() - t0:.0f} s in all")
