"""Scale benchmark: the real sweep driver (Ray Tune, Optuna TPE, ASHA) with trials whose tasks take ~0.1 s.

    .venv/bin/python bench/scale.py --trials 100 300 1000       # the full run (~15 min on 2 cores)
    .venv/bin/python bench/scale.py --quick                     # 20 and 40 trials, small resume/analyze

Each sweep runs in its own process (`scale.py _sweep`): ``sweeps.driver.run_sweep`` on a local
Ray with ``--num-cpus`` logical CPUs (default 64, many more than the 2 real cores: the trials
mostly sleep, as if their GPU did the work). Only the training is a stand-in: the real trainable
(``sweeps.trainable.make_trainable``) runs in the Ray worker with ``pah.trial.run_trial``
replaced by ``standin_run_trial``, which sleeps ``--task-s`` per task and otherwise keeps the
protocol (a checkpoint dir and meta.json per task, a ``tune.report`` per task, ``result.json``,
``params.json``, ``log.txt``), so the driver, Tune, the searcher, ASHA, the snapshots and the
per-trial files are the real ones.

Measured per sweep: wall time of the search phase against the ideal (trials x training / slots),
overhead per trial (slot-seconds not spent training / trials), the driver process's CPU time per
trial and peak RSS, and the count and cost of Tune's experiment snapshots (``save_to_dir``) and of
``SnapshotGuard``'s backups. Then, for the largest N: the driver is SIGKILLed once half the
trials have finished, and ``--resume`` is timed (to the first trial trained again, and to the
end), checking that no finished trial trained a task again. Last, ``pah analyze`` over
``--analyze`` generated result.json files. Results: JSON (``--json``) and a PNG (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- the stand-in trial (runs in Ray workers)


def standin_run_trial(cfg, out_dir, *, device="auto", on_task_end=None, progress=False):
    """``pah.trial.run_trial`` with the training replaced by a sleep of TASK_S per task.

    Resumes from ``checkpoint/meta.json`` like the real one; a trial whose result.json exists
    returns it. The accuracy is a smooth function of the sampled lr (so TPE and ASHA have
    something to rank) with per-seed noise.
    """
    import math

    from pah import metrics
    from pah.config import config_id
    from pah.io import atomic_write_bytes, atomic_write_json, read_json
    from pah.trial import TaskReport

    out = Path(out_dir)
    if (out / "result.json").exists():
        return read_json(out / "result.json")
    task_s = float(os.environ.get("PAH_SCALE_TASK_S", "0.1"))
    T = 5
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    try:
        state = read_json(ckpt / "state.json")
    except (OSError, ValueError):
        state = {"acc_rows": [], "train_seconds": 0.0}
    rng = random.Random(f"{cfg.seed}/{cfg.train.lr}")
    quality = math.exp(-((math.log10(cfg.train.lr) + 2.5) ** 2))  # best near lr = 3e-3
    acc_rows = state["acc_rows"]
    for t in range(len(acc_rows), T):
        t0 = time.perf_counter()
        time.sleep(task_s)
        state["train_seconds"] += time.perf_counter() - t0
        acc_rows.append([max(0.0, min(1.0, 0.5 + 0.45 * quality - 0.05 * (t - j) + 0.01 * rng.random()))
                         for j in range(t + 1)])
        atomic_write_bytes(ckpt / "state.pt", os.urandom(4096))  # a small model
        atomic_write_json(ckpt / "state.json", state)
        with open(out / "bench.jsonl", "a") as f:
            f.write(json.dumps({"task_end": time.time()}) + "\n")
        pad = [r + [None] * (T - len(r)) for r in acc_rows] + [[None] * T] * (T - len(acc_rows))
        if on_task_end is not None:  # the matrix padded to T x T with None, as pah.trial writes it
            on_task_end(TaskReport(task=t, num_tasks=T, acc_matrix=pad, val_matrix=pad,
                                   metrics=metrics.summarize(acc_rows), val_metrics=metrics.summarize(acc_rows),
                                   checkpoint_dir=ckpt, train_seconds=state["train_seconds"]))
    pad = [r + [None] * (T - len(r)) for r in acc_rows]
    result = {
        "schema": 1, "method": cfg.method.name, "dataset": cfg.data.name, "seed": cfg.seed,
        "config": cfg.to_dict(), "config_id": config_id(cfg), "acc_matrix": pad, "val_matrix": pad,
        "metrics": metrics.summarize(acc_rows), "val_metrics": metrics.summarize(acc_rows),
        "timing": {"train_seconds": round(state["train_seconds"], 3), "images_per_second": 0.0,
                   "eval_seconds": 0.0, "setup_seconds": 0.0},
        "env": {"device": "standin"},
    }
    atomic_write_json(out / "result.json", result)
    return result


def _install_standin() -> None:
    """Make the driver build the real trainable around the stand-in training."""
    import sweeps.trainable as st

    real_make = st.make_trainable

    def make_trainable(*args, **kwargs):
        real = real_make(*args, **kwargs)

        def pah_trial(config):
            from ray import tune

            import pah.trial

            pah.trial.run_trial = standin_run_trial  # the real trainable imports it at call time
            out = st.trial_dir(args[1], args[2], tune.get_context().get_trial_id())
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "bench.jsonl", "a") as f:  # a stopped trial never returns from its report
                f.write(json.dumps({"enter": time.time(), "pid": os.getpid()}) + "\n")
            real(config)

        return pah_trial

    st.make_trainable = make_trainable


# --------------------------------------------------------------------------- one sweep (child process)


def _spec(n: int, concurrency: int) -> dict:
    return {
        "name": f"scale{n}", "base": "split-digits-pah",
        "space": {"train.lr": {"loguniform": [1e-4, 1e-1]}, "method.lambda_kd": {"uniform": [0.1, 2.0]}},
        "searcher": "optuna-tpe", "metric": "val_avg_acc", "mode": "max", "num_samples": n,
        "max_concurrent": concurrency, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus": 1, "gpus": 0}, "confirm": {"top_k": 0}, "max_failures": 1, "wandb": False,
    }


class _Timer:
    def __init__(self):
        self.n, self.total, self.max, self.samples = 0, 0.0, 0.0, []

    def wrap(self, fn, *, first_arg_len=None):
        def wrapped(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                self.n += 1
                self.total += dt
                self.max = max(self.max, dt)
                self.samples.append((time.monotonic(), dt, first_arg_len(a) if first_arg_len else None))
        return wrapped

    def summary(self) -> dict:
        return {"count": self.n, "total_s": round(self.total, 3), "max_ms": round(1e3 * self.max, 2),
                "mean_ms": round(1e3 * self.total / max(self.n, 1), 2)}


def child(args) -> int:
    os.environ.update(PAH_SCALE_TASK_S=str(args.task_s), RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")
    import ray
    import ray.tune
    from ray.tune.execution.tune_controller import TuneController

    import sweeps.snapshot as snap
    from sweeps.driver import run_sweep
    from sweeps.spec import spec_from_dict

    _install_standin()
    save, backup = _Timer(), _Timer()
    TuneController.save_to_dir = save.wrap(TuneController.save_to_dir, first_arg_len=lambda a: len(a[0]._trials))
    snap.backup = backup.wrap(snap.backup)
    import sweeps.driver as drv

    ends = {"read_results": _Timer(), "summary_table": _Timer(), "write_report": _Timer(), "_export_study": _Timer()}
    for name, timer in ends.items():  # what the driver does after the search: read results once, table, report, study
        setattr(drv, name, timer.wrap(getattr(drv, name)))
    fit_cpu = []
    real_fit = ray.tune.Tuner.fit

    def fit(self):  # the driver's CPU time in the phase alone (no imports, no report at the end)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            return real_fit(self)
        finally:
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            fit_cpu.append((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))

    ray.tune.Tuner.fit = fit
    marks: dict[str, float] = {}
    real_restore = ray.tune.Tuner.restore.__func__

    def restore(cls, *a, **k):  # the resume's steps: Tune reading its snapshot
        marks["restore_start"] = time.time()
        try:
            return real_restore(cls, *a, **k)
        finally:
            marks["restore_end"] = time.time()

    ray.tune.Tuner.restore = classmethod(restore)
    import sweeps.progress as sp

    held: dict[str, list[float]] = {}  # trial id -> [started by Tune, ended (finished or stopped)]
    real_start, real_complete = sp.ConciseProgress.on_trial_start, sp.ConciseProgress.on_trial_complete

    def on_trial_start(self, iteration, trials, trial, **info):
        held[trial.trial_id] = [time.time()]
        return real_start(self, iteration, trials, trial, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        held.setdefault(trial.trial_id, [float("nan")]).append(time.time())
        return real_complete(self, iteration, trials, trial, **info)

    sp.ConciseProgress.on_trial_start, sp.ConciseProgress.on_trial_complete = on_trial_start, on_trial_complete
    t_start = time.time() - (time.perf_counter() - _T0)  # from the process's first line
    tmp = tempfile.mkdtemp(prefix="pahscale-", dir="/tmp")
    marks["imports_done"] = time.time()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             logging_level="warning")
    marks["ray_up"] = time.time()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.resume:
        sweep = run_sweep(resume=args.dir, progress=True)
    else:
        spec = spec_from_dict(_spec(args.trials[0], args.concurrency), name=f"scale{args.trials[0]}")
        sweep = run_sweep(spec, storage=Path(args.dir).parent, name=Path(args.dir).name, progress=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "process_start": t_start, "run_sweep_wall_s": round(wall, 2),
        "driver_cpu_s": round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2),
        "driver_peak_rss_mb": round(ru1.ru_maxrss / 1024, 1), "driver_fit_cpu_s": round(sum(fit_cpu), 2),
        "tune_save_to_dir": save.summary(), "snapshot_backup": backup.summary(),
        "after_search_s": {k: round(t.total, 2) for k, t in ends.items()},
        "marks": {k: round(v - t_start, 2) for k, v in marks.items()},
        "save_samples": [(round(dt * 1e3, 2), n) for _, dt, n in save.samples],
        "held": {k: v for k, v in held.items() if len(v) == 2},
        "phase_s": json.loads((sweep / "sweep.json").read_text())["phases"]["search"].get("seconds"),
    }
    Path(args.json).write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- the parent: sweeps, resume, analyze


def _run_child(argv: list[str], log: Path, *, kill_when=None) -> subprocess.Popen:
    t_start = time.time() - 1
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, __file__, "_sweep", *argv], stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=ROOT)
    while p.poll() is None:
        if kill_when is not None and kill_when():
            os.kill(p.pid, signal.SIGKILL)  # the driver alone, as a crash would
            p.wait()
            time.sleep(0.5)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # then the Ray it started (its session), as when a job ends
            except ProcessLookupError:
                pass
            for d in Path("/tmp").glob("pahscale-*"):  # the killed driver's Ray temp dir (ours: see child())
                if d.stat().st_mtime >= t_start:
                    shutil.rmtree(d, ignore_errors=True)
            return p
        time.sleep(0.2)
    if p.returncode:
        sys.exit(f"sweep child failed (rc {p.returncode}): see {log}")
    return p


def _trials(sweep: Path) -> dict[str, dict]:
    """Per trial dir: finished?, training seconds, enter/exit times of each start, tasks trained."""
    out = {}
    for d in (sweep / "trials" / "search").iterdir():
        runs: list[dict] = []  # one per start: enter time, pid, end of its last task
        for ln in (d / "bench.jsonl").read_text().splitlines() if (d / "bench.jsonl").exists() else []:
            e = json.loads(ln)
            if "enter" in e:
                runs.append({**e, "exit": e["enter"]})
            elif runs:
                runs[-1]["exit"] = e["task_end"]
        log = (d / "log.txt").read_text().splitlines() if (d / "log.txt").exists() else []
        res = d / "result.json"
        state = d / "checkpoint" / "state.json"
        train = json.loads(state.read_text())["train_seconds"] if state.exists() else 0.0
        out[d.name] = {"finished": res.exists(), "train_s": train, "runs": runs,
                       "trained": sum("trained task" in ln for ln in log)}
    return out


def measure_sweep(n: int, args, work: Path) -> dict:
    sweep = work / f"s{n}"
    js = work / f"s{n}.json"
    _run_child(["--trials", str(n), "--dir", str(sweep), "--json", str(js), *_common(args)], work / f"s{n}.log")
    m = json.loads(js.read_text())
    trials = _trials(sweep)
    train = sum(t["train_s"] for t in trials.values())
    phase = m["phase_s"]
    ideal = train / args.concurrency
    enters = [r["enter"] for t in trials.values() for r in t["runs"]]
    exits = [r["exit"] for t in trials.values() for r in t["runs"]]
    in_worker = [r["exit"] - r["enter"] - t["train_s"] for t in trials.values() for r in t["runs"][:1]]
    # a trial holds its slot from Tune's start to its end: the overhead is what is not training
    held = [end - start - trials[k]["train_s"] for k, (start, end) in m["held"].items() if k in trials]
    pids = {r["pid"] for t in trials.values() for r in t["runs"]}
    span = max(exits) - min(enters)
    row = {
        "trials": n, "finished": sum(t["finished"] for t in trials.values()), "train_s_total": round(train, 1),
        "phase_wall_s": phase, "trials_span_s": round(span, 1), "ideal_s": round(ideal, 1),
        "wall_over_ideal": round(phase / ideal, 2),
        # slot-seconds not spent training, per trial: Tune scheduling, worker start, the protocol, ASHA's stops
        "held_overhead_per_trial_s": round(sum(held) / max(len(held), 1), 3),
        "trials_per_s": round(n / span, 2),
        "overhead_per_trial_s": round((phase * args.concurrency - train) / n, 3),
        "overhead_per_trial_span_s": round((span * args.concurrency - train) / n, 3),
        "in_worker_overhead_per_trial_ms": round(1e3 * sum(in_worker) / len(in_worker), 1),
        "worker_processes": len(pids),
        "driver_cpu_s": m["driver_cpu_s"], "driver_cpu_per_trial_ms": round(1e3 * m["driver_cpu_s"] / n, 1),
        "driver_peak_rss_mb": m["driver_peak_rss_mb"], "driver_fit_cpu_s": m["driver_fit_cpu_s"],
        "driver_fit_cpu_per_trial_ms": round(1e3 * m["driver_fit_cpu_s"] / n, 1),
        "tune_save_to_dir": m["tune_save_to_dir"], "snapshot_backup": m["snapshot_backup"],
        "after_search_s": m.get("after_search_s"),
        "save_ms_at_end": m["save_samples"][-1][0] if m["save_samples"] else None,
        "experiment_state_kb": round(max((p.stat().st_size for p in (sweep / "tune" / "search").glob(
            "experiment_state-*.json")), default=0) / 1024, 1),
        "optuna_db_trials": _db_count(sweep),
    }
    row["save_samples"] = m["save_samples"]
    first = next(iter(sorted(sweep.glob("trials/search/*/result.json"))), None)
    if first is not None and not (work / "template.json").exists():
        shutil.copy(first, work / "template.json")  # for measure_analyze
    print(json.dumps({k: v for k, v in row.items() if k != "save_samples"}), flush=True)
    if not args.keep:
        shutil.rmtree(sweep, ignore_errors=True)
    return row


def _db_count(sweep: Path) -> int | None:
    db = sweep / "optuna.db"
    if not db.exists():
        return None
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute("select count(*) from trials").fetchone()[0]


def measure_resume(n: int, args, work: Path) -> dict:
    sweep = work / f"r{n}"
    common = ["--trials", str(n), "--dir", str(sweep), *_common(args)]

    def half_done():  # half the trials ended: finished, or stopped early by ASHA
        d = sweep / "trials" / "search"
        return d.is_dir() and sum(1 for _ in d.glob("*/result.json")) + sum(1 for _ in d.glob("*/stopped.json")) >= n // 2

    t_kill = time.time()
    _run_child([*common, "--json", str(work / "r1.json")], work / f"r{n}-1.log", kill_when=half_done)
    t_kill = time.time()
    before = _trials(sweep)
    done_before = {k for k, t in before.items() if t["finished"]}
    stopped_before = {d.name for d in (sweep / "trials" / "search").glob("*") if (d / "stopped.json").exists()}
    db_after_kill = _db_count(sweep)
    t0 = time.time()
    _run_child([*common, "--resume", "--json", str(work / "r2.json")], work / f"r{n}-2.log")
    total = time.time() - t0
    m = json.loads((work / "r2.json").read_text())
    after = _trials(sweep)
    new_enters = [r["enter"] for t in after.values() for r in t["runs"] if r["enter"] > t_kill]
    retrained = [k for k in done_before if after[k]["trained"] > before[k]["trained"]]
    stopped_trained_on = [k for k in stopped_before if after[k]["trained"] > before[k]["trained"]]
    row = {
        "trials": n, "finished_at_kill": len(done_before), "stopped_at_kill": len(stopped_before),
        "trial_dirs_at_kill": len(before), "optuna_db_trials_at_kill": db_after_kill,
        "stopped_trials_trained_on": len(stopped_trained_on),
        "resume_to_first_trial_s": round(min(new_enters) - m["process_start"], 2) if new_enters else None,
        "resume_process_to_first_trial_s": round(min(new_enters) - t0, 2) if new_enters else None,
        "resume_total_s": round(total, 1), "finished_after": sum(t["finished"] for t in after.values()),
        "trial_dirs_after": len(after), "finished_trials_retrained": len(retrained),
        "driver_cpu_s": m["driver_cpu_s"], "optuna_db_trials_after": _db_count(sweep),
        "resume_steps_s": m.get("marks"),  # since the resume process's start: imports, Ray, Tuner.restore
    }
    print(json.dumps(row), flush=True)
    if not args.keep:
        shutil.rmtree(sweep, ignore_errors=True)
    return row


def measure_analyze(n: int, work: Path) -> dict:
    """``pah analyze`` over n generated result.json files (n/10 configs x 10 seeds), each consistent
    (its metrics those of its matrix, as ``pah analyze`` checks)."""
    from pah import metrics

    root = work / "analyze"
    if not (work / "template.json").exists():
        return {}
    template = json.loads((work / "template.json").read_text())
    for i in range(n):
        d = root / "trials" / "search" / f"t{i:05d}"
        d.mkdir(parents=True)
        r = dict(template, seed=i % 10, config_id=f"cfg{i // 10:04d}")
        r["config"] = dict(template["config"], seed=i % 10)
        shift = (i // 10) * 1e-4 + (i % 10) * 1e-5
        r["acc_matrix"] = [[a if a is None else min(1.0, a + shift) for a in row] for row in template["acc_matrix"]]
        r["metrics"] = metrics.summarize([[a for a in row if a is not None] for row in r["acc_matrix"]])
        (d / "result.json").write_text(json.dumps(r))
        (d / "params.json").write_text(json.dumps({"params": {"train.lr": 1e-3 + i // 10 * 1e-6}, "seed": i % 10}))
    times = []
    for _ in range(2):  # the 2nd with a warm page cache
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pah", "analyze", str(root), "--out", str(work / "table.txt")],
                           cwd=ROOT, capture_output=True, text=True)
        times.append(round(time.perf_counter() - t0, 2))
        if p.returncode:
            sys.exit(f"pah analyze failed: {p.stderr[-2000:]}")
    rows = (work / "table.txt").read_text().count("cfg")
    out = {"results": n, "configs": n // 10, "analyze_s": times, "rows_in_table": rows}
    print(json.dumps(out), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return out


def _common(args) -> list[str]:
    return ["--concurrency", str(args.concurrency), "--num-cpus", str(args.num_cpus), "--task-s", str(args.task_s)]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = results["sweeps"]
    n = [r["trials"] for r in rows]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    a, b, c = fig.subplots(1, 3)
    a.plot(n, [r["held_overhead_per_trial_s"] for r in rows], "o-", label="slot held, not training (Tune start to end)")
    a.plot(n, [r["in_worker_overhead_per_trial_ms"] / 1e3 for r in rows], "s-", label="inside the worker")
    a.axhline(1.0, color="r", ls="--", lw=1, label="target 1 s")
    a.set(xlabel="trials", ylabel="seconds", title="overhead per trial beyond training")
    a.legend(fontsize=7)
    b.plot(n, [r["driver_fit_cpu_per_trial_ms"] for r in rows], "o-", label="search phase (Tuner.fit)")
    b.plot(n, [r["driver_cpu_per_trial_ms"] for r in rows], "s-", label="whole run_sweep (+ table, report)")
    b.axhline(50, color="r", ls="--", lw=1, label="target 50 ms")
    b.set(xlabel="trials", ylabel="ms", title="driver CPU per trial")
    b.legend(fontsize=7)
    for r in rows:
        s = r["save_samples"]
        c.plot([x[1] for x in s], [x[0] for x in s], ".", ms=3, label=f"{r['trials']} trials")
    c.set(xlabel="trials in the experiment", ylabel="ms", title="Tune snapshot (save_to_dir) cost")
    c.legend(fontsize=7)
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--quick", action="store_true", help="20 and 40 trials, resume at 40, analyze 1,000 results")
    ap.add_argument("--concurrency", type=int, default=32, help="max_concurrent of the sweep (default 32)")
    ap.add_argument("--num-cpus", type=int, default=64, help="logical CPUs of the local Ray (default 64)")
    ap.add_argument("--task-s", type=float, default=0.1, help="seconds of stand-in training per task (5 tasks)")
    ap.add_argument("--analyze", type=int, default=10_000, help="result.json files for the analyze timing")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--only-resume", action="store_true", help="the killed-driver resume of max(--trials) alone")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "scale.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "bench" / "scale_overhead.png")
    ap.add_argument("--keep", action="store_true", help="keep the sweep dirs (under $TMPDIR)")
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    if len(sys.argv) > 1 and sys.argv[1] == "_sweep":
        return child(ap.parse_args(sys.argv[2:]))
    args = ap.parse_args()
    if args.quick:
        args.trials, args.analyze = [20, 40], 1000
    work = Path(tempfile.mkdtemp(prefix="pah-scale-"))
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": os.uname().nodename,
               "cores": os.cpu_count(), "num_cpus": args.num_cpus, "concurrency": args.concurrency,
               "task_s": args.task_s, "tasks": 5, "sweeps": []}
    if args.only_resume:
        results["resume"] = measure_resume(max(args.trials), args, work)
        results["load_average"] = os.getloadavg()
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    for n in args.trials:
        results["sweeps"].append(measure_sweep(n, args, work))
        results["load_average"] = os.getloadavg()
    if not args.no_resume:
        results["resume"] = measure_resume(max(args.trials), args, work)
    if args.analyze:
        results["analyze"] = measure_analyze(args.analyze, work)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
