"""`pah sweep` end to end with real Ray and real processes: quickstart, killed workers, a killed driver, NaNs.

Each test runs the CLI in its own session (one private Ray cluster per test) and, whatever
happens, kills every process left in that session by its id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import check_wandb_runs

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

pytestmark = pytest.mark.slow

SECRET = "pah-test-secret-key-0123456789abcdef"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env.update({"WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines() if line.strip()) if int(s) == sid]


def _kill_session(sid: int) -> None:
    """SIGKILL every process of a session we started (the CLI and the Ray it started).

    A driver killed this way cannot remove its Ray temp dir: remove it here, found in the
    command lines of that session's own Ray processes.
    """
    temp_dirs = _ray_temp_dirs(sid)
    try:
        _kill_pids(sid)
    finally:
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _ray_temp_dirs(sid: int) -> set[str]:
    found = set()
    for pid in _session_pids(sid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        found.update(re.findall(r"/tmp/pahray-[A-Za-z0-9_]+", cmd))
    return found


def _kill_pids(sid: int) -> None:
    for _ in range(20):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.25)


class Sweep:
    """`python -m pah sweep ...` in its own session, with its output in a file."""

    def __init__(self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
        self.log = log
        self._f = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pah", "sweep", *args], cwd=cwd, env=env or _env(),
                                     stdout=self._f, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"pah sweep did not finish in {timeout} s:\n{self.log.read_text()[-4000:]}")
        self.close()
        return rc, self.log.read_text()

    def kill_driver(self) -> None:
        """SIGKILL the driver alone, as a crash would (its Ray temp dir is removed by close())."""
        self._temp_dirs = _ray_temp_dirs(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        _kill_session(self.proc.pid)
        for d in getattr(self, "_temp_dirs", ()):
            shutil.rmtree(d, ignore_errors=True)
        self._f.close()


def _write_spec(path: Path, **fields) -> Path:
    spec = {"base": "split-digits-pah", "resources": {"cpus": 1}, "max_concurrent": 2, "wandb": False, **fields}
    path.write_text(yaml.safe_dump(spec))
    return path


def _results(sweep: Path, phase: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep / "trials" / phase).glob("*/result.json")}


def _log_lines(trial: Path) -> list[str]:
    return (trial / "log.txt").read_text().splitlines() if (trial / "log.txt").exists() else []


def _in_optuna_db(sweep: Path) -> list[str]:
    """Tune trial ids of the trials in SWEEP/optuna.db (read as optuna-dashboard would, while it is written)."""
    if not (sweep / "optuna.db").exists():
        return []
    with contextlib.closing(sqlite3.connect(sweep / "optuna.db", timeout=10)) as c:
        try:
            rows = c.execute("select value_json from trial_user_attributes where key = 'tune_trial_id'").fetchall()
        except sqlite3.OperationalError:  # created, tables not yet
            return []
    return [json.loads(v) for (v,) in rows]


def _wait_for(cond, timeout: float, what: str, sweep: Sweep):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if sweep.proc.poll() is not None:
            break
        time.sleep(0.05)
    sweep.close()
    pytest.fail(f"never saw {what}:\n{sweep.log.read_text()[-4000:]}")


# --------------------------------------------------------------------------- quickstart


def test_quickstart_end_to_end(tmp_path):
    """Both phases, the seed-averaged table, result.json files, offline W&B runs, no secret on disk."""
    t0 = time.monotonic()
    run = Sweep(["quickstart", "--storage", str(tmp_path / "sweeps"), "--name", "qs"], tmp_path, tmp_path / "out.txt",
                env=_env(WANDB_API_KEY=SECRET))
    rc, out = run.wait(timeout=290)
    assert rc == 0, out[-4000:]
    assert time.monotonic() - t0 < 300
    sweep = tmp_path / "sweeps" / "qs"
    assert out.splitlines()[0] == f"sweep: {sweep}"
    assert "[search]" in out and "[confirm]" in out

    state = json.loads((sweep / "sweep.json").read_text())
    assert state["phases"]["search"]["done"] and state["phases"]["confirm"]["done"]
    cands = state["phases"]["confirm"]["candidates"]
    # the top 2, and the base config (the preset plus the spec's set) if it is not one of them
    assert len(cands) in (2, 3) and sum(bool(c.get("base")) for c in cands) == 1
    assert [c for c in cands if c.get("base")][0]["config_id"] == state["base"]["config_id"]
    search, confirm = _results(sweep, "search"), _results(sweep, "confirm")
    assert 2 <= len(search) <= 6
    # every confirm seed; seed 0 is the search trial itself where that finished
    expected_seeds = sorted(s for c in cands for s in ([1, 2] if c["dir"] else [0, 1, 2]))
    assert sorted(r["seed"] for r in confirm.values()) == expected_seeds
    ids = {c["config_id"] for c in cands}
    assert {r["config_id"] for r in confirm.values()} == ids
    # the search's first trial is the base config; a trial without a result was stopped by ASHA, and says so
    assert "[search] trial 1 is the base config (lr=0.002, head_lr=0.002, lambda_kd=0.5)" in out
    params = [json.loads((d / "params.json").read_text())["params"] for d in (sweep / "trials" / "search").iterdir()]
    assert params.count(state["base"]["point"]) == 1
    assert re.search(r"\[search\] \S+ \S+ start  \(base config\) lr=0.002, head_lr=0.002, lambda_kd=0.5", out)
    for d in (sweep / "trials" / "search").iterdir():
        assert (d / "result.json").exists() or json.loads((d / "stopped.json").read_text())["by"] == "asha", d
    # Tune's dir of a trial is named when Tune makes the trial (no start time in it): a restore finds it
    tune_dirs = sorted(d.name for d in (sweep / "tune" / "search").glob("pah_trial_*") if d.is_dir())
    assert [re.fullmatch(r"pah_trial_([0-9a-f]{8})_\d+_\S+", n).group(1) for n in tune_dirs] == sorted(
        d.name for d in (sweep / "trials" / "search").iterdir()), tune_dirs
    assert not [n for n in tune_dirs if re.search(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", n)], tune_dirs
    assert "best vs base config over 3 vs 3 seed(s)" in out and "verdict: " in out
    report = (sweep / "report.html").read_text()
    assert f"report: {sweep / 'report.html'}" in out and report.count("<img") >= 2 * len(cands) + 2
    for r in confirm.values():
        assert r["schema"] == 1 and len(r["acc_matrix"]) == 5 and 0 <= r["metrics"]["avg_acc"] <= 1

    # the seed-averaged table: one row per confirmed config
    table = out[out.index("seed-averaged"):]
    for cid in ids:
        assert cid in table
    assert (sweep / "optuna.db").exists()

    # W&B: one complete offline run per trial in the sweep dir; the API key never reaches a file
    assert check_wandb_runs(sweep, "search") + check_wandb_runs(sweep, "confirm") == len(
        list((sweep / "wandb").glob("offline-run-*")))
    for tid, r in confirm.items():  # grouped by config_id, so W&B groups the seeds of a config
        run_file = next((sweep / "wandb").glob(f"offline-run-*-{tid}/run-{tid}.wandb"))
        assert r["config_id"].encode() in run_file.read_bytes()
    for f in sweep.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key written to {f}"


# --------------------------------------------------------------------------- a killed trial worker


def test_killed_worker_resumes_from_its_task_checkpoint(tmp_path):
    spec = _write_spec(
        tmp_path / "one.yaml",
        set={"train.epochs_per_task": 4, "seed": 0},
        space={"train.lr": {"choice": [0.002]}},
        searcher="random", num_samples=1, scheduler="none", max_failures=2, wandb={"mode": "offline"},
    )
    run = Sweep([str(spec), "--storage", str(tmp_path), "--name", "kw"], tmp_path, tmp_path / "out.txt")
    sweep = tmp_path / "kw"

    def after_two_tasks():
        for d in (sweep / "trials" / "search").glob("*"):
            if any("trained task 2/5" in ln for ln in _log_lines(d)):
                return d
        return None

    trial = _wait_for(after_two_tasks, 120, "a trial finish its 2nd task", run)
    pid = int((trial / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    assert not (trial / "result.json").exists(), "the trial finished before it could be killed"
    rc, out = run.wait(timeout=180)
    assert rc == 0, out[-4000:]

    lines = _log_lines(trial)
    starts = [ln for ln in lines if " start " in ln]
    assert len(starts) == 2, lines
    resumed_at = int(starts[1].split("tasks_done=")[1].split()[0])
    assert 2 <= resumed_at < 5, lines  # from its last task checkpoint, not from scratch
    trained = [ln.split("trained task ")[1] for ln in lines if "trained task" in ln]
    assert trained.count("1/5") == 1 and trained.count("2/5") == 1  # never retrained
    assert str(pid) not in starts[1]
    result = json.loads((trial / "result.json").read_text())

    # the same config and seed, uninterrupted, with the same thread count (1 CPU per trial)
    ref = tmp_path / "ref"
    r = subprocess.run(
        [sys.executable, "-m", "pah", "train", "split-digits-pah", "--set", "train.epochs_per_task=4",
         "--set", "train.lr=0.002", "--set", "seed=0", "--out", str(ref), "--device", "cpu", "--no-progress"],
        env=_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"), capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr
    expected = json.loads((ref / "result.json").read_text())
    assert result["config_id"] == expected["config_id"] and result["seed"] == expected["seed"] == 0
    assert result["acc_matrix"] == expected["acc_matrix"]
    assert check_wandb_runs(sweep, "search") == 1  # one run, every task once, across the kill


# --------------------------------------------------------------------------- a killed driver, then --resume


def test_killed_driver_then_resume_finishes_without_retraining(tmp_path):
    spec = _write_spec(
        tmp_path / "four.yaml",
        # 6 epochs a task: at 3 a trial took 1-2 s on the quiet VM, and once the sweep ended before a trial was
        # seen half-trained in a snapshot (the window this test needs)
        set={"train.epochs_per_task": 6},
        space={"train.lr": {"loguniform": [0.001, 0.005]}},
        searcher="optuna-tpe", num_samples=4, scheduler="none",
        confirm={"top_k": 1, "seeds": [0, 1]}, wandb={"mode": "offline"},
    )
    run = Sweep([str(spec), "--storage", str(tmp_path), "--name", "kd"], tmp_path, tmp_path / "out1.txt")
    sweep = tmp_path / "kd"

    def known_to_tune(d):  # in the last good snapshot, the one a restore starts from
        snaps = (sweep / "tune" / "search" / ".pah-snapshot").glob("experiment_state-*.json")
        return any(d.name in p.read_text(errors="ignore") for p in snaps)

    def told_optuna():  # trials the driver has printed as ended
        return set(re.findall(r"\[search\] \S+ (\S+) (?:finished|stopped early)", run.log.read_text()))

    def mid_sweep():
        trials = list((sweep / "trials" / "search").glob("*"))
        done = [d for d in trials if (d / "result.json").exists()]
        busy = [d for d in trials if not (d / "result.json").exists()
                and any("trained task" in ln for ln in _log_lines(d)) and known_to_tune(d)]
        # the live study: SWEEP/optuna.db holds every trial that ended, while the driver runs
        live = told_optuna() and told_optuna() <= set(_in_optuna_db(sweep))
        return (done, busy) if done and busy and live else None

    done, busy = _wait_for(mid_sweep, 150, "one finished and one half-trained trial, in optuna.db", run)
    run.kill_driver()  # with no chance to clean up
    ended = told_optuna()
    time.sleep(0.5)
    run.close()  # then the rest of its session, as when a job ends
    # the worst moment to die: while Ray rewrote its snapshot in place (it truncates, then writes)
    for pattern in ("experiment_state-*.json", "search_gen_state-*", "searcher-state-*"):
        for f in (sweep / "tune" / "search").glob(pattern):
            f.write_bytes(b"")
    assert ended <= set(_in_optuna_db(sweep))  # a killed driver lost no ended trial from the study
    done = [d for d in (sweep / "trials" / "search").glob("*") if (d / "result.json").exists()]
    before = {d.name: len(_log_lines(d)) for d in done}
    assert len(done) < 4

    resume = Sweep(["--resume", str(sweep)], tmp_path, tmp_path / "out2.txt")
    rc, out = resume.wait(timeout=240)
    assert rc == 0, out[-4000:]
    assert out.splitlines()[0] == f"sweep: {sweep}"
    assert " ERROR " not in out and "last good copy" in out

    search = _results(sweep, "search")
    assert len(search) == 4
    # Tune snapshots its experiment every few seconds: a trial started after the last snapshot
    # is unknown to the restored experiment, which samples another in its place. Such a trial
    # (at most one per concurrent slot) is left unfinished; everything Tune knew about continues.
    orphans = [d for d in (sweep / "trials" / "search").glob("*") if d.name not in search]
    assert len(orphans) <= 2 and not any((d / "result.json").exists() for d in orphans)
    for name, n in before.items():  # finished before the kill: not one task trained again
        new = _log_lines(sweep / "trials" / "search" / name)[n:]
        assert not [ln for ln in new if "trained task" in ln], (name, new)
    assert not set(orphans) & set(busy)  # a trial Tune knew about is never orphaned
    for d in busy:
        if d.name in before:
            continue
        starts = [ln for ln in _log_lines(d) if " start " in ln]
        assert len(starts) >= 2 and int(starts[-1].split("tasks_done=")[1].split()[0]) >= 1, _log_lines(d)
    # the top config and the base config (the search's first trial) if that is another, on seed 1 (seed 0 is reused)
    confirm = _results(sweep, "confirm")
    cands = json.loads((sweep / "sweep.json").read_text())["phases"]["confirm"]["candidates"]
    assert sorted(r["seed"] for r in confirm.values()) == sorted(s for c in cands for s in ([1] if c["dir"] else [0, 1]))
    assert len(cands) in (1, 2) and [c for c in cands if c.get("base")]
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["phases"]["search"]["done"] and state["phases"]["confirm"]["done"]
    assert "seed-averaged" in out

    # the Optuna study survived in optuna.db: every search trial is in it, finished
    import optuna

    study = optuna.load_study(study_name="four", storage=f"sqlite:///{sweep / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4, [t.state for t in study.trials]
    ids = _in_optuna_db(sweep)
    assert len(ids) == len(set(ids)) and set(search) <= set(ids)  # each trial once, after a restore told it again

    # W&B: the runs the kill cut short were completed on resume (their earlier rows replayed)
    assert check_wandb_runs(sweep, "search") == 4 and check_wandb_runs(sweep, "confirm") == len(confirm)


# --------------------------------------------------------------------------- a non-finite loss


def test_nonfinite_loss_errors_one_trial_and_the_others_finish(tmp_path):
    spec = _write_spec(
        tmp_path / "nan.yaml",
        set={"train.epochs_per_task": 1},
        space={"train.head_lr": {"choice": [1.0e9, 0.002]}},
        searcher="grid", num_samples=1, scheduler="none", max_failures=1,
    )
    run = Sweep([str(spec), "--storage", str(tmp_path), "--name", "nan"], tmp_path, tmp_path / "out.txt")
    rc, out = run.wait(timeout=180)
    sweep = tmp_path / "nan"
    # a sweep with an errored trial fails, naming the kind of error (its own: a resume repeats it)
    assert rc == 1, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: 1 trial(s) errored (search 1); 1 by an error of their own") and "NonFiniteLoss" in last
    assert last.endswith(f"resume with: pah sweep --resume {sweep}"), last
    trials = {json.loads((d / "params.json").read_text())["params"]["train.head_lr"]: d
              for d in (sweep / "trials" / "search").glob("*")}
    bad, good = trials[1.0e9], trials[0.002]
    assert (good / "result.json").exists()
    assert not (bad / "result.json").exists()
    err = json.loads((bad / "error.json").read_text())
    assert err["type"] == "NonFiniteLoss" and "non-finite loss at task 1/5" in err["message"]
    error_lines = [ln for ln in out.splitlines() if ln.startswith("[search]") and " ERROR " in ln]
    assert error_lines and bad.name in error_lines[0] and "non-finite loss" in error_lines[0], out[-3000:]
    assert "NonFiniteLoss" in error_lines[0]
    assert "2 of 2 trials ended, 1 errored" in out
    # the retry did not train the failing task again: a non-finite loss is deterministic
    assert sum("trained task" in ln for ln in _log_lines(bad)) == 0
    assert any("error again" in ln for ln in _log_lines(bad))

    # the same command again (what a requeued SLURM job does): the finished sweep is kept as it is
    logs = {d: _log_lines(d) for d in (bad, good)}
    again = Sweep([str(spec), "--storage", str(tmp_path), "--name", "nan"], tmp_path, tmp_path / "out2.txt")
    rc, out = again.wait(timeout=120)
    assert rc == 1 and out.splitlines()[0] == f"sweep: {sweep}" and "resuming" in out, out
    assert "retrying" not in out and out.strip().splitlines()[-1].startswith("error: 1 trial(s) errored"), out
    assert {d: _log_lines(d) for d in (bad, good)} == logs
