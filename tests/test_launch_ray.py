"""`pah launch ray` against a real Ray head started here on 127.0.0.1 (Ray Jobs API)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_sweep_e2e import _in_optuna_db

from conftest import run_pah


def _dashboard_missing() -> str | None:
    from ray._private.utils import get_dashboard_dependency_error

    err = get_dashboard_dependency_error()
    return f"the Ray Jobs API needs ray[default] on the cluster ({err})" if err else None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_dashboard_missing() is not None, reason=str(_dashboard_missing()))]


def _free_port() -> int:
    from launch.cluster import free_port

    return free_port()


def _ours(temp_dir: Path) -> list[int]:
    """PIDs of processes whose command line names our head's temp dir (Ray's processes do)."""
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if str(temp_dir).encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid()]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A private Ray head: own ports, own temp dir, dashboard on loopback; stopped by PID, never `ray stop`."""
    temp_dir = Path(f"/tmp/pahray_test_{os.getpid()}")
    dash = _free_port()
    # as on a real cluster, the head's `python` is the environment Ray and this package live in
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path_factory.mktemp("rayhead") / "head.log"
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--disable-usage-stats",
           f"--port={_free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--temp-dir={temp_dir}", f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
           f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
           "--min-worker-port=0", "--max-worker-port=0"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Ray dashboard did not come up:\n" + log.read_text()
            time.sleep(1)
        yield url
    finally:
        # SIGTERM to `ray start` alone drains and stops its node in ~2 s; then kill what is left:
        # its process group, and job drivers (sessions of their own) that name our temp dir.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        leftovers = _ours(temp_dir)
        for kill, pid in [(os.killpg, proc.pid)] + [(os.kill, pid) for pid in leftovers]:
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        subprocess.run(["rm", "-rf", str(temp_dir)])


def test_launch_ray_cancelled_mid_search_then_the_printed_command_finishes_the_sweep(ray_head, tmp_path):
    """`pah launch cancel` (`ray job stop`) mid-search: the driver stops gracefully (its SIGTERM, within
    the job's stop window), `pah launch ray` exits 1 with one error line naming the command that resumes,
    and that command finishes the sweep: exactly num_samples search trials, each once in optuna.db, no
    finished result.json rewritten, the confirm phase and its table streamed back.

    The cancel is sent as the first search trial starts and the search holds 6 trials (3 rounds of 2):
    `pah launch cancel` is a fresh Python importing Ray, seconds on a busy machine, and a search of 3
    trials (2 rounds) had ended before its SIGTERM landed."""
    t0 = time.monotonic()
    sweep = tmp_path / "qs"
    log = tmp_path / "launch.txt"
    with open(log, "w") as f:
        first = subprocess.Popen(
            [sys.executable, "-m", "pah", "launch", "ray", "quickstart", "--address", ray_head, "--storage",
             str(tmp_path), "--name", "qs", "--set", "num_samples=6", "--set", "confirm.top_k=1",
             "--set", "confirm.seeds=[0,1]", "--set", "train.epochs_per_task=1",
             "--set", "scheduler.name=none"],  # no early stop: every search trial ends with its result.json
            stdout=f, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "WANDB_MODE": "offline", "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.monotonic() + 300
        while " start " not in log.read_text():  # a search trial started: cancel now
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        job = next(ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("job: "))
        cancel = run_pah("launch", "cancel", job, "--address", ray_head)
        assert cancel.returncode == 0 and f"cancelled: {job}" in cancel.stdout, cancel.stdout + cancel.stderr
        rc = first.wait(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    out = log.read_text()
    errors = [ln for ln in out.splitlines() if ln.startswith("error: Ray job")]
    assert rc == 1 and len(errors) == 1 and out.rstrip().endswith(errors[0]), out[-4000:]
    assert f"error: Ray job {job} ended STOPPED" in errors[0], errors[0]
    # the driver's own graceful stop, not Ray's SIGKILL; if not, what Ray says of how its driver ended
    info = run_pah("launch", "status", job, "--address", ray_head).stdout
    assert "interrupted by SIGTERM" in out, out[-4000:] + "\n" + info
    state = json.loads((sweep / "sweep.json").read_text())
    assert not state["phases"]["search"]["done"], out[-3000:]  # the cancel landed mid-search
    finished = {p: p.read_bytes() for p in sweep.glob("trials/*/*/result.json")}

    again = shlex.split(errors[0].split("resume with: ", 1)[1])
    assert again[:3] == ["pah", "launch", "ray"], again
    r = run_pah(*again[1:], env={"RAY_AUTH_MODE": "disabled"}, timeout=420)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "state: SUCCEEDED" in r.stdout and "confirmed configs, seed-averaged" in r.stdout, out[-4000:]
    search = list((sweep / "trials" / "search").glob("*/result.json"))
    assert len(search) == 6, sorted(str(p) for p in search)  # exactly num_samples, none twice
    assert {p: p.read_bytes() for p in finished} == finished  # nothing finished written again
    ids = _in_optuna_db(sweep)
    assert len(ids) == len(set(ids)) and {p.parent.name for p in search} <= set(ids), ids
    confirm = list((sweep / "trials" / "confirm").glob("*/result.json"))
    assert len(confirm) == 1, out[-3000:]
    results = [json.loads(p.read_text()) for p in search + confirm]
    assert all(res["schema"] == 1 and "avg_acc" in res["metrics"] for res in results)
    job2 = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("job: "))
    st = run_pah("launch", "status", job2, "--address", ray_head)
    assert st.returncode == 0 and "state: SUCCEEDED" in st.stdout, st.stdout + st.stderr
    print(f"pah launch ray, cancelled and resumed: {time.monotonic() - t0:.0f} s")


def test_launch_ray_no_wait_and_unreachable_address(ray_head, tmp_path):
    r = run_pah("launch", "ray", "--probe", "--address", ray_head, "--storage", str(tmp_path), "--name", "p",
                "--no-wait", env={"RAY_AUTH_MODE": "disabled"})
    assert r.returncode == 0, r.stdout + r.stderr
    job = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("job: "))
    deadline = time.monotonic() + 120
    while not (tmp_path / "p" / "probe.json").exists():
        assert time.monotonic() < deadline, run_pah("launch", "status", job, "--address", ray_head).stdout
        time.sleep(1)
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["nodes"] == 1

    bad = run_pah("launch", "ray", "quickstart", "--address", f"http://127.0.0.1:{_free_port()}")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1, bad.stderr
