"""Reading offline W&B run files back (sweeps/wandb_runs.py), on a run written by wandb itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")
pytest.importorskip("ray")

from sweeps.wandb_runs import config_of, history_rows, is_finished, read_records, summary_of  # noqa: E402

WRITE = """
import sys, wandb
run = wandb.init(mode="offline", dir=sys.argv[1], id="r1", project="p", config={"train.lr": 0.002, "seed": 3})
for t in range(1, 4):
    run.log({"tasks_completed": t, "avg_acc": 1.0 / t}, step=t)
run.finish()
"""


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    r = subprocess.run([sys.executable, "-c", WRITE, str(d)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (f,) = d.glob("wandb/offline-run-*-r1/run-r1.wandb")
    return f


def test_a_finished_run_reads_back_whole(run_file):
    assert config_of(run_file) == {"train.lr": 0.002, "seed": 3}
    rows = history_rows(run_file)
    assert [(r["_step"], r["tasks_completed"], r["avg_acc"]) for r in rows] == [(t, t, 1.0 / t) for t in (1, 2, 3)]
    assert summary_of(run_file)["avg_acc"] == pytest.approx(1 / 3)
    assert is_finished(run_file)


def test_a_cut_short_run_reads_as_its_whole_records(run_file, tmp_path):
    data = run_file.read_bytes()
    full = list(read_records(run_file))
    for size in (7, len(data) // 3, len(data) // 2, len(data) - 1):  # 7: the header alone, as seen
        cut = tmp_path / f"cut{size}.wandb"
        cut.write_bytes(data[:size])
        got = list(read_records(cut))
        assert got == full[: len(got)] and len(got) < len(full)
        assert not is_finished(cut)
    (tmp_path / "x.wandb").write_bytes(b"not a run file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(read_records(tmp_path / "x.wandb"))


ACTOR = """
import sys
from ray.air.integrations.wandb import _QueueItem
from sweeps.wandb_runs import RunSpec, SharedWandbActor

root, steps = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
spec = RunSpec("k", root, (), (), dict(id="t1", dir=root, mode="offline", project="p", config={"seed": 0}))
actor = SharedWandbActor()
for t in steps:
    actor.feed(spec, (_QueueItem.RESULT, {"tasks_completed": t, "avg_acc": 1.0 / t, "training_iteration": t}))
actor.feed(spec, (_QueueItem.END, None))
actor.feed(spec, (_QueueItem.RESULT, {"tasks_completed": 9, "avg_acc": 0.0}))  # after END: ignored
assert actor.close() == []
"""


def _script(script: str, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    r = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == rc, r.stderr[-3000:]
    return r


def test_the_logging_actor_fills_lost_reports_and_replays_a_cut_short_run(tmp_path):
    """The process the sweep's W&B callback logs through, fed as Tune feeds it (without Ray): a
    report lost with a killed trial process (task 2) is rebuilt from the trial's checkpoint; a
    second run of the same trial (a restored trial after a killed driver) logs the first one's
    rows again and moves the first out of the offline-run-* pattern."""
    import torch

    acc = [[1.0], [0.9, 0.95], [0.8, 0.9, 0.99], [0.7, 0.8, 0.9, 0.97]]
    ckpt = tmp_path / "trials" / "search" / "t1" / "checkpoint" / "state.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"acc_rows": acc[:3], "val_rows": acc[:3], "config": {"data": {"val_fraction": 0.1}}}, ckpt)
    _script(ACTOR, str(tmp_path), "1,3")
    (first,) = tmp_path.glob("wandb/offline-run-*-t1/run-t1.wandb")
    rows = history_rows(first)
    assert [r["tasks_completed"] for r in rows] == [1, 2, 3]
    assert rows[1]["avg_acc"] == pytest.approx((0.9 + 0.95) / 2)  # task 2: rebuilt from the checkpoint
    assert rows[1]["val_avg_acc"] == pytest.approx((0.9 + 0.95) / 2)

    torch.save({"acc_rows": acc, "val_rows": acc, "config": {"data": {"val_fraction": 0.1}}}, ckpt)
    _script(ACTOR, str(tmp_path), "4")
    (second,) = tmp_path.glob("wandb/offline-run-*-t1/run-t1.wandb")
    assert second != first and not first.exists()
    assert list(tmp_path.glob("wandb/replaced-run-*-t1/run-t1.wandb"))
    rows = history_rows(second)
    assert [r["tasks_completed"] for r in rows] == [1, 2, 3, 4] and is_finished(second)
    assert [r["avg_acc"] for r in rows[:3]] == [r["avg_acc"] for r in history_rows(
        next(tmp_path.glob("wandb/replaced-run-*-t1/run-t1.wandb")))]
    assert summary_of(second)["avg_acc"] == pytest.approx(1 / 4)


SHARED = """
import os, sys
from ray.air.integrations.wandb import _QueueItem
from sweeps.wandb_runs import RunSpec, SharedWandbActor

root, part = sys.argv[1], sys.argv[2]
spec = {i: RunSpec(i, root, ("done",), ("trial_id",), dict(id=i, dir=root, mode="offline", project="p",
                                                          group="g", config={"run": i}))
        for i in ("a", "b", "c")}
actor = SharedWandbActor()  # one process, as Ray starts it, and again after a crash

def result(i, t):
    actor.feed(spec[i], (_QueueItem.RESULT, {"tasks_completed": t, "avg_acc": t / 10, "done": False, "trial_id": i}))

def end(i):
    try:
        actor.feed(spec[i], (_QueueItem.END, None))
    except Exception as e:
        print(f"{i} failed: {type(e).__name__}", flush=True)

if part == "1":
    for t in (1, 2):
        for i in "abc":  # three runs open at once, their items interleaved
            result(i, t)
    end("b")
    os._exit(9)  # killed with a and c open: no finish, no atexit, W&B's service gone with it
result("a", 3)  # a restarted process: a and c are new to it (b had its answer, Ray sends it nothing more)
for i in "ac":
    end(i)
assert actor.close() == []
"""


def test_one_process_logs_runs_at_once_a_failing_run_breaks_none_and_a_restart_reopens_them(tmp_path):
    """The shared logging process (``SharedWandbActor``) holds several runs open at once; one that
    fails (its journal cannot be written) fails alone, and its END says so; a process killed with
    runs open and started again (Ray's ``max_restarts``) opens them again from their journals, as
    Ray retries the items it had not answered: every run is whole, its earlier file renamed."""
    (tmp_path / "wandb" / "rows" / "c.jsonl").mkdir(parents=True)  # c: no journal can be written
    first = _script(SHARED, str(tmp_path), "1", rc=9)
    assert "failed" not in first.stdout
    (b,) = tmp_path.glob("wandb/offline-run-*-b/run-b.wandb")
    assert is_finished(b) and [r["tasks_completed"] for r in history_rows(b)] == [1, 2]
    assert config_of(b)["run"] == "b" and config_of(b)["trial_id"] == "b"
    assert "done" not in history_rows(b)[0] and summary_of(b)["avg_acc"] == pytest.approx(0.2)
    (cut,) = tmp_path.glob("wandb/offline-run-*-a/run-a.wandb")
    assert not is_finished(cut)

    second = _script(SHARED, str(tmp_path), "2")
    assert second.stdout.splitlines() == ["c failed: IsADirectoryError"]
    (a,) = tmp_path.glob("wandb/offline-run-*-a/run-a.wandb")
    assert a != cut and is_finished(a) and list(tmp_path.glob("wandb/replaced-run-*-a/run-a.wandb"))
    assert [r["tasks_completed"] for r in history_rows(a)] == [1, 2, 3]
    assert summary_of(a)["avg_acc"] == pytest.approx(0.3) and config_of(a)["run"] == "a"
    assert list(tmp_path.glob("wandb/offline-run-*-b/run-b.wandb")) == [b]  # finished before: untouched
    assert not list(tmp_path.glob("wandb/offline-run-*-c"))  # c failed before W&B opened it


PACKAGES = """
import importlib.metadata, sys
from ray.air.integrations.wandb import _QueueItem
from sweeps.wandb_runs import RunSpec, SharedWandbActor

listed = importlib.metadata.distributions
calls = []
importlib.metadata.distributions = lambda *a, **k: calls.append(1) or listed(*a, **k)
root = sys.argv[1]
actor = SharedWandbActor()
for i in "ab":
    spec = RunSpec(i, root, (), (), dict(id=i, dir=root, mode="offline", project="p", group="g"))
    actor.feed(spec, (_QueueItem.RESULT, {"tasks_completed": 1, "avg_acc": 0.5}))
    actor.feed(spec, (_QueueItem.END, None))
assert actor.close() == []
print(f"listed {len(calls)} time(s)")
"""


def test_the_logging_process_lists_the_installed_packages_once_and_every_run_gets_them(tmp_path):
    """W&B lists every installed distribution at each ``wandb.init`` (a run's requirements.txt): a third of
    a 40-trial sweep's CPU beside the trials (bench/RESULTS.md). The shared process lists them once; each
    run's requirements.txt is still the whole list."""
    out = _script(PACKAGES, str(tmp_path))
    assert out.stdout.splitlines() == ["listed 1 time(s)"], out.stdout
    reqs = {p.parent.parent.name.rsplit("-", 1)[1]: p.read_text().splitlines()
            for p in tmp_path.glob("wandb/offline-run-*/files/requirements.txt")}
    assert sorted(reqs) == ["a", "b"] and reqs["a"] == reqs["b"], reqs.keys()
    import importlib.metadata

    assert {f"wandb=={importlib.metadata.version('wandb')}", f"ray=={importlib.metadata.version('ray')}"} <= set(reqs["a"])
    assert len(reqs["a"]) >= len({d.metadata["Name"] for d in importlib.metadata.distributions()}) - 1


CALLBACK = """
import os, sys, tempfile, time
from pathlib import Path
import ray
from sweeps.wandb_runs import FeedingWandbCallback, wait_for_runs

root = sys.argv[1]
os.environ["WANDB_MODE"] = "offline"  # as the sweep's driver sets it


class Trial:  # what Ray's callback reads of a Tune trial
    def __init__(self, tid):
        self.trial_id, self.config, self.experiment_dir_name = tid, {"x": 1}, "e"
        self.local_path, self.last_result = root, {}

    def __str__(self):
        return self.trial_id


ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="warning",
         _temp_dir=tempfile.mkdtemp(prefix="pahray-", dir="/tmp"))
cb = FeedingWandbCallback(project="p", mode="offline", dir=root)
cb.setup()
trials = [Trial(t) for t in "abc"]


def report(t, n):
    cb.log_trial_result(n, t, {"tasks_completed": n, "avg_acc": n / 10, "training_iteration": n})


for n in (1, 2):
    for t in trials:
        report(t, n)
assert len({id(a) for a in cb._trial_logging_actors.values()}) == 1, "one logging actor for all runs"
rows = Path(root, "wandb", "rows")
while sum(len(p.read_text().splitlines()) for p in rows.glob("[ab].jsonl")) < 4:  # a and b open, 2 rows each
    time.sleep(0.2)
ray.kill(cb._shared, no_restart=False)  # the process dies with a and b open; Ray starts it again
for t in trials:
    report(t, 3)
    cb.log_trial_end(t)
wait_for_runs(cb, 300)
assert not cb._trial_logging_actors and cb._shared is None
ray.shutdown()
"""


def test_the_sweep_callback_logs_every_trial_through_one_actor_that_survives_a_restart(tmp_path):
    """Through Ray, as a sweep phase runs it: all trials' runs in one logging actor; the actor
    killed with runs open is restarted by Ray, which sends it the items it had not answered, and
    the runs end whole; a run that fails is named on stderr and the others complete."""
    (tmp_path / "wandb" / "rows" / "c.jsonl").mkdir(parents=True)  # c: no journal can be written
    r = _script(CALLBACK, str(tmp_path))
    assert "the W&B run of trial c failed (IsADirectoryError" in r.stderr, r.stderr[-3000:]
    for tid in "ab":
        (f,) = tmp_path.glob(f"wandb/offline-run-*-{tid}/run-{tid}.wandb")
        assert is_finished(f) and [r["tasks_completed"] for r in history_rows(f)] == [1, 2, 3]
        assert summary_of(f)["avg_acc"] == pytest.approx(0.3) and config_of(f)["x"] == 1
        assert list(tmp_path.glob(f"wandb/replaced-run-*-{tid}"))  # the run the killed process had open
