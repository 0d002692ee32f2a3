"""Ctrl-C and SIGTERM with real processes: `pah sweep` stops gracefully on the first signal, at once on a
second, says how to resume, and `--resume` finishes exactly the trials the sweep owes; `pah train` too.

One small sweep (split-digits, 4 search trials, no scheduler) goes through every round in turn:
SIGINT once, SIGTERM once, SIGINT twice, SIGTERM twice, each at a seeded random moment while
trials train; then a trial's worker is killed (an error of the machine, which a resume retries);
then `--resume` finishes it. After every round: the exit code, the last stderr line, and that no
finished result.json was rewritten; at the end: 4 search trials, each once in optuna.db and W&B.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, check_wandb_runs

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from test_sweep_e2e import (  # noqa: E402
    Sweep,
    _env,
    _in_optuna_db,
    _log_lines,
    _results,
    _session_pids,
    _write_spec,
)

SAMPLES = 4


def _finished(sweep: Path) -> dict[Path, tuple[int, bytes]]:
    """Every finished trial's result.json, with its mtime and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (sweep / "trials").glob("*/*/result.json")}


def _trained(sweep: Path) -> int:
    return sum(ln.count("trained task") for d in (sweep / "trials" / "search").glob("*") for ln in _log_lines(d))


def _stderr_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("error:")]


def _start(sweep: Path, spec: Path, log: Path) -> Sweep:
    args = ["--resume", str(sweep)] if (sweep / "sweep.json").exists() else [str(spec), "--storage", str(sweep.parent),
                                                                              "--name", sweep.name]
    return Sweep(args, sweep.parent, log, env=_env(PAH_STORAGE_RETRY_S="0"))


def _wait_training(run: Sweep, sweep: Path, rng: random.Random, timeout: float = 150) -> bool:
    """Until a task more has been trained in this run, then a random moment more; False if the run ended first."""
    before, t0 = _trained(sweep), time.monotonic()
    while _trained(sweep) <= before:
        if run.proc.poll() is not None:
            return False
        if time.monotonic() - t0 > timeout:
            run.close()
            pytest.fail(f"no task trained in {timeout} s:\n{run.log.read_text()[-3000:]}")
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    return run.proc.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(1500)  # six drivers in turn: 4 rounds took 10 min on a 2-core VM at load 13-22
def test_sigint_and_sigterm_once_and_twice_then_resume_finishes_the_sweep(tmp_path):
    spec = _write_spec(
        tmp_path / "tiny.yaml",
        set={"train.epochs_per_task": 1},
        space={"train.lr": {"loguniform": [0.001, 0.005]}},
        searcher="optuna-tpe", num_samples=SAMPLES, scheduler="none", max_failures=0,
        confirm={"top_k": 0}, wandb={"mode": "offline"},
    )
    sweep = tmp_path / "sig"
    rng = random.Random(19)
    kept: dict[Path, tuple[int, bytes]] = {}
    for i, (sig, times) in enumerate([(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGTERM, 2)]):
        run = _start(sweep, spec, tmp_path / f"round{i}.txt")
        if _wait_training(run, sweep, rng):
            os.kill(run.proc.pid, sig)
            if times == 2:
                time.sleep(rng.uniform(0.1, 1.5))  # the second: during the graceful stop, or after it ended
                if run.proc.poll() is None:
                    os.kill(run.proc.pid, sig)
        rc, out = run.wait(timeout=120)
        state = json.loads((sweep / "sweep.json").read_text())
        if rc == 0 or state["phases"]["search"]["done"]:
            # the sweep ended before the signal, or the signal came while it was shutting down after its last
            # trial (exit 128 + sig, the search rightly done): all of it, every trial ended
            assert rc in (0, 128 + sig) and len(_results(sweep, "search")) == SAMPLES, (rc, out[-3000:])
            assert state["phases"]["search"]["done"], out[-3000:]
            break
        assert rc == 128 + sig and _stderr_lines(out), (i, rc, out[-3000:])
        last = _stderr_lines(out)[-1]
        assert out.rstrip().endswith(last), out[-2000:]  # the last line of all
        assert f"interrupted by {sig.name}" in last and last.endswith(f"resume with: pah sweep --resume {sweep}"), last
        assert "Traceback" not in out, out[-3000:]
        assert not state["phases"]["search"]["done"], (i, out[-3000:])  # never done because fit() returned
        assert not list((sweep / "trials").glob("*/*/stopped.json"))  # no scheduler: nothing "stopped early"
        now = _finished(sweep)
        assert {p: now[p] for p in kept} == kept, i  # no finished result.json rewritten
        kept = now

    # a trial's worker killed mid-task (max_failures: 0): it errors, the sweep ends with exit 1 ...
    run = _start(sweep, spec, tmp_path / "kill.txt")
    if _wait_training(run, sweep, rng):
        ours = set(_session_pids(run.proc.pid))  # this sweep's processes only (a stale pid may be anyone's now)
        busy = [int((d / "pid").read_text()) for d in (sweep / "trials" / "search").glob("*")
                if not (d / "result.json").exists() and (d / "pid").exists()]
        for pid in busy:
            if pid in ours:
                os.kill(pid, signal.SIGKILL)
                break
    rc, out = run.wait(timeout=240)
    if rc == 1:  # (a trial may have finished just before the kill: then nothing errored)
        assert _stderr_lines(out), out[-4000:]
        last = _stderr_lines(out)[-1]
        assert last.startswith("error: 1 trial(s) errored (search 1)") and "a fault outside the trial" in last, last
        assert last.endswith(f"resume with: pah sweep --resume {sweep}"), last
        err = [json.loads(p.read_text()) for p in (sweep / "trials" / "search").glob("*/error.json")]
        assert len(err) == 1 and err[0]["type"], err
        # ... and --resume retries it from its last task checkpoint, with a fresh max_failures
        run = _start(sweep, spec, tmp_path / "retry.txt")
        rc, out = run.wait(timeout=240)
        assert "retrying 1 errored trial(s)" in out, out[-3000:]
    assert rc == 0, out[-4000:]

    search = _results(sweep, "search")
    assert len(search) == SAMPLES, sorted(search)  # exactly the trials the sweep owes
    assert {p: _finished(sweep)[p] for p in kept} == kept  # nothing finished was trained or written again
    for d in (sweep / "trials" / "search").glob("*"):  # no task trained twice
        trained = [ln.split("trained task ")[1] for ln in _log_lines(d) if "trained task" in ln]
        assert len(trained) == len(set(trained)), (d.name, _log_lines(d))
    orphans = [d for d in (sweep / "trials" / "search").glob("*") if d.name not in search]
    summary = out[out.index("trials:"):]
    assert "unfinished" not in summary, summary
    assert (f"{len(orphans)} orphaned" in summary) if orphans else "orphaned" not in summary, summary
    ids = _in_optuna_db(sweep)
    assert len(ids) == len(set(ids)) and set(search) <= set(ids), ids  # each trial once
    assert check_wandb_runs(sweep, "search") == SAMPLES


@pytest.mark.slow
def test_sigint_stops_train_with_130_naming_the_command_that_resumes(tmp_path):
    out = tmp_path / "trial"
    ckpt = out / "checkpoint" / "state.pt"
    args = ["train", "split-digits-pah", "--set", "train.epochs_per_task=20", "--out", str(out), "--no-progress"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal's Ctrl-C delivers it, whatever this test runs under: a background job of a
    # script (`tests/load/under_load.sh ... &`) ignores SIGINT, and so would its children
    proc = subprocess.Popen([sys.executable, "-m", "pah", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() - t0 < 180, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = _stderr_lines(err)
    command = f"pah train split-digits-pah --set train.epochs_per_task=20 --out {out}"
    assert "stopped by SIGINT" in line and str(ckpt) in line and line.endswith(command), line
    assert not (out / "result.json").exists() and not list(out.rglob("*.tmp"))
    again = subprocess.run([sys.executable, "-m", "pah", *command.split()[1:], "--no-progress"], env=env,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["acc_matrix"][-1][-1] is not None


def test_a_trial_dir_unknown_to_tunes_saved_experiment_is_orphaned_not_resumable(tmp_path):
    """A double SIGTERM can leave a trial that started after Tune's last snapshot: a restore never
    continues it, so it is reported orphaned, with what it holds (analysis.states)."""
    from analysis.states import TrialState, trial_status
    from analysis.sweep import phase_lines, sweep_trials

    sweep = tmp_path / "sw"
    (sweep / "tune" / "search").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"spec": {}, "phases": {}}))
    state = {"trial_data": [[json.dumps({"trial_id": "aaaa0001", "status": "RUNNING"}), "{}"]], "runner_data": {},
             "stats": {"start_time": 1.0}}
    (sweep / "tune" / "search" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    for tid in ("aaaa0001", "bbbb0002"):
        d = sweep / "trials" / "search" / tid
        d.mkdir(parents=True)
        for name in ("log.txt", "params.json", "pid"):
            (d / name).write_text("{}")
    known, orphan = (trial_status(sweep / "trials" / "search" / t) for t in ("aaaa0001", "bbbb0002"))
    assert known.state is TrialState.UNFINISHED
    assert orphan.state is TrialState.ORPHANED and "log.txt, params.json, pid" in orphan.detail
    assert "resumable" not in orphan.sentence()
    lines = phase_lines(sweep_trials(sweep))
    assert "1 unfinished (killed, resumable), 1 orphaned" in lines[0], lines
    # outside a sweep (no saved experiment to ask) a trial dir is what its files say
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "log.txt").write_text("")
    (lone / "params.json").write_text("{}")
    assert trial_status(lone).state is TrialState.UNFINISHED


def test_launch_entry_ends_as_pah_sweep_does_with_one_error_line(tmp_path):
    """The Ray Job entrypoint (`python -m launch.entry`) maps the driver's ends to an exit code and one
    `error:` line, no traceback: bad input here (exit 2); an interrupt is 130/143 the same way."""
    r = subprocess.run([sys.executable, "-m", "launch.entry", "no-such-spec", "--storage", str(tmp_path), "--name", "x"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and _stderr_lines(r.stderr) == r.stderr.strip().splitlines()[-1:], r.stderr
    assert "no-such-spec" in r.stderr


@pytest.mark.slow
def test_sigterm_after_the_drivers_ray_shut_down_still_reaches_its_handler(tmp_path):
    """Ray's core worker resets SIGTERM to the default action in ``ray.shutdown()`` behind Python's
    back (``signal.getsignal`` still names the handler): a SIGTERM as a finished sweep shut down
    killed the driver with -15 and no line (CI). The driver's Ray context puts the handler back."""
    script = tmp_path / "after.py"
    script.write_text(textwrap.dedent("""
        import os, signal, time
        from sweeps.driver import _ray
        from sweeps.spec import load_spec

        with _ray(None, load_spec("quickstart")):  # (ray.init installs its own; the driver takes it back)
            signal.signal(signal.SIGTERM, lambda s, f: (print("handled", flush=True), os._exit(43)))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(0)
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert (done.returncode, done.stdout.strip()) == (43, "handled"), (done.returncode, done.stderr[-3000:])
