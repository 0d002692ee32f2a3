"""`pah launch slurm` against the real single-node SLURM that CI starts (.ci/slurm.sh start).

Each test submits real jobs through submitit; a Ray cluster comes up inside them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import check_wandb_runs, run_pah

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sinfo") is None or not os.environ.get("SLURM_CONF"),
                       reason="needs a SLURM cluster: sinfo on PATH and SLURM_CONF set "
                              "(eval \"$(bash .ci/slurm.sh start)\")"),
]

# The quickstart sweep, smaller: 4 search trials, then its best config on 2 more seeds.
SMALL = ["--set", "num_samples=4", "--set", "confirm.top_k=1"]


def _field(out: str, key: str) -> str:
    m = re.search(rf"^{key}: (\S+)", out, re.M)
    assert m, f"no '{key}:' line in:\n{out}"
    return m.group(1)


def _wait_job(job: str, timeout_s: float) -> str:
    """Wait until the job has left the queue for good; returns its final accounting state."""
    from launch.slurm import job_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        state = job_state(job)
        if not queued and state not in ("PENDING", "RUNNING", "REQUEUED", "UNKNOWN"):
            return state
        time.sleep(2)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still {state} after {timeout_s:.0f} s")


def _job_log(sweep: Path, job: str) -> str:
    logs = sweep.with_name(sweep.name + ".slurm")
    return "\n".join((logs / f"{job}_0_log.{ext}").read_text(errors="replace") for ext in ("out", "err")
                     if (logs / f"{job}_0_log.{ext}").exists())


def test_bad_partition_or_option_is_exit_2_with_slurms_reason(tmp_path):
    storage = tmp_path / "runs"
    r = run_pah("launch", "slurm", "quickstart", "--partition", "no-such-partition", "--storage", str(storage))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "invalid partition" in lines[0].lower() and "no-such-partition" in lines[0]
    assert not storage.exists()  # a refused job leaves nothing behind

    r = run_pah("launch", "slurm", "quickstart", "--sbatch", "no-such-option=1", "--storage", str(storage))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error:") and "no-such-option" in r.stderr

    r = run_pah("launch", "slurm", "no-such-spec", "--storage", str(storage))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "no-such-spec" in r.stderr
    assert not storage.exists()


def test_two_tasks_on_one_node_make_a_two_node_ray_cluster(tmp_path):
    t0 = time.monotonic()
    r = run_pah("launch", "slurm", "--probe", "--nodes", "1", "--tasks-per-node", "2", "--cpus-per-task", "1",
                "--time", "10", "--storage", str(tmp_path), "--name", "probe", "--wait", timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    job = _field(r.stdout, "job")
    assert Path(_field(r.stdout, "sweep")) == tmp_path / "probe"
    logs = tmp_path / "probe.slurm"
    cluster = json.loads((logs / "cluster.json").read_text())
    assert cluster["nodes"] == 2 and cluster["cpus"] == 2, cluster  # rank 1 joined rank 0's head
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["nodes"] == 2 and probe["trial_nodes"] == 2 and not probe["errors"], probe  # trials used both
    assert "Ray worker joined" in (logs / f"{job}_1_log.out").read_text()
    # each node had its own temp dir, and both are gone with their processes
    assert not list(Path("/tmp").glob(f"pahray_{job}_*"))

    st = run_pah("launch", "status", job)
    assert st.returncode == 0 and "state: COMPLETED" in st.stdout, st.stdout + st.stderr
    print(f"2-task probe job: {time.monotonic() - t0:.0f} s")


def test_quickstart_sweep_survives_scontrol_requeue(tmp_path):
    """Submit the quickstart sweep, requeue the running job after its first finished trial:
    the requeued job resumes the same sweep, finishes it, and no finished trial trains again."""
    t0 = time.monotonic()
    r = run_pah("launch", "slurm", "quickstart", *SMALL, "--cpus-per-task", "2", "--time", "20",
                "--storage", str(tmp_path), "--name", "qs")
    assert r.returncode == 0, r.stdout + r.stderr
    job, sweep = _field(r.stdout, "job"), Path(_field(r.stdout, "sweep"))
    assert sweep == tmp_path / "qs"
    for key in ("log", "watch", "cancel"):
        _field(r.stdout, key)

    # the first finished trial of the search phase
    search = sweep / "trials" / "search"
    deadline = time.monotonic() + 240
    while not list(search.glob("*/result.json")):
        assert time.monotonic() < deadline, "no trial finished within 240 s:\n" + _job_log(sweep, job)
        time.sleep(0.5)
    before = {p.parent: ((p.parent / "log.txt").read_text(), p.stat().st_mtime_ns) for p in search.glob("*/result.json")}
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    t_requeue = time.monotonic()

    state = _wait_job(job, timeout_s=420)
    log = _job_log(sweep, job)
    assert state == "COMPLETED", log
    assert f"job {job} start 1, rank 0/1" in log, log  # it really ran a second time, the same job id
    assert "resuming" in log

    # the sweep finished both phases, every confirm trial wrote the contract's result.json
    sweep_state = json.loads((sweep / "sweep.json").read_text())
    assert sweep_state["phases"]["search"]["done"] and sweep_state["phases"]["confirm"]["done"], sweep_state
    confirm = [json.loads(p.read_text()) for p in (sweep / "trials" / "confirm").glob("*/result.json")]
    # the top-1 config and the base config (the search's first trial) if that is another, on seeds 1 and 2
    # (seed 0 comes from the search; a candidate without a finished search trial runs it too)
    cands = sweep_state["phases"]["confirm"]["candidates"]
    assert len(cands) in (1, 2) and [c for c in cands if c.get("base")], cands
    assert sorted(r["seed"] for r in confirm) == sorted(s for c in cands for s in ([1, 2] if c["dir"] else [0, 1, 2])), log
    for res in confirm:
        assert res["schema"] == 1 and res["dataset"] == "split-digits" and res["method"] == "pah"
        assert set(res["metrics"]) >= {"avg_acc", "forgetting", "bwt"} and res["config_id"]
    assert len({res["config_id"] for res in confirm}) == len(cands)
    assert "confirmed configs, seed-averaged" in log

    # Finished trials were not trained again and kept their result. (A trial that wrote result.json
    # just before the requeue, before Tune saved its final report, is restarted by Tune, sees that
    # it is done and ends at once: its log says "start tasks_done=5 (finished already)".)
    for trial, (old, mtime) in before.items():
        new = (trial / "log.txt").read_text()
        assert new.startswith(old)
        added = new[len(old):].splitlines()
        assert not [ln for ln in added if "trained task" in ln], f"{trial.name} trained again: {added}"
        assert all("finished" in ln for ln in added), added
        assert (trial / "result.json").stat().st_mtime_ns == mtime
    # W&B: every trial's offline run complete (config, a row per task, summary), across the requeue
    assert check_wandb_runs(sweep, "search") >= 1 and check_wandb_runs(sweep, "confirm") == len(confirm)
    print(f"requeue test: {time.monotonic() - t0:.0f} s (requeue after {t_requeue - t0:.0f} s)")


def test_status_and_cancel(tmp_path):
    r = run_pah("launch", "slurm", "--probe", "--cpus-per-task", "1", "--time", "5", "--storage", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    job = _field(r.stdout, "job")
    assert f"pah launch cancel {job}" in r.stdout and f"pah launch status {job}" in r.stdout
    st = run_pah("launch", "status", job)
    assert st.returncode == 0 and re.search(r"^state: (PENDING|RUNNING)$", st.stdout, re.M), st.stdout + st.stderr
    c = run_pah("launch", "cancel", job)
    assert c.returncode == 0 and f"cancelled: {job}" in c.stdout, c.stdout + c.stderr
    assert _wait_job(job, timeout_s=60) == "CANCELLED"  # accounting sees it: submitit would too
    again = run_pah("launch", "cancel", job)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "CANCELLED" in again.stderr
    assert run_pah("launch", "status", "999999").returncode == 2


def _squeue_ids() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


def test_a_job_no_node_can_run_is_never_queued_and_the_default_fits(tmp_path):
    """The issue's command on a node with C CPUs: asking for C+1 is refused (exit 2, nothing queued);
    without --cpus-per-task the job is sized from the spec, capped at C, and `pah launch status`
    says in words why a job waits."""
    cpus = max(int(c) for c in subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%c"], capture_output=True,
                                              text=True, check=True).stdout.split())
    before = _squeue_ids()
    for extra, words in [(["--cpus-per-task", str(cpus + 1)], [f"--cpus-per-task {cpus + 1}", f"at most {cpus} CPU"]),
                         (["--nodes", "2"], ["--nodes 2", "only 1 node"])]:
        r = run_pah("launch", "slurm", "quickstart", "--partition", "debug", *extra, "--storage", str(tmp_path / "s"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stdout + r.stderr
        assert all(w in lines[0] for w in words), lines[0]
        assert not (tmp_path / "s").exists() and _squeue_ids() == before
    # GPUs asked for the site's way are left to SLURM (which has none here, and says so)
    r = run_pah("launch", "slurm", "quickstart", "--set", "resources.gpus=0.5", "--sbatch", "gres=gpu:1",
                "--storage", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.startswith("error: sbatch refused") and "gres" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists() and _squeue_ids() == before

    # more concurrent trials than the node has CPUs: the request is capped at the node (held: it never runs)
    r = run_pah("launch", "slurm", "quickstart", "--partition", "debug", "--nodes", "1", "--set", f"max_concurrent={2 * cpus}",
                "--time", "5", "--sbatch", "hold=", "--storage", str(tmp_path / "s"))
    assert r.returncode == 0, r.stdout + r.stderr
    job = _field(r.stdout, "job")
    try:
        assert re.search(rf"^resources: .* x {cpus} CPU\(s\)", r.stdout, re.M), r.stdout
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert re.search(rf"\bNumCPUs={cpus}\b", show), show
        st = run_pah("launch", "status", job)
        assert st.returncode == 0 and "reason: JobHeldUser: held by its user" in st.stdout, st.stdout + st.stderr
    finally:
        subprocess.run(["scancel", job])

    # a job that can never start, queued behind pah's back: status says so
    bad = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-c", str(cpus + 1), "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while "PartitionConfig" not in subprocess.run(["squeue", "-h", "-j", bad, "-o", "%r"], capture_output=True,
                                                      text=True).stdout:
            assert time.monotonic() < deadline, "no PartitionConfig reason within 60 s"
            time.sleep(1)
        st = run_pah("launch", "status", bad)
        assert st.returncode == 0 and "state: PENDING" in st.stdout, st.stdout + st.stderr
        assert "reason: PartitionConfig: it will never start" in st.stdout, st.stdout
    finally:
        subprocess.run(["scancel", bad])
