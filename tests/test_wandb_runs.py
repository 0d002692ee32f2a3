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
from sweeps.wandb_runs import ReplayingWandbActor

root, steps = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
actor = ReplayingWandbActor(root, None, [], [], id="t1", dir=root, mode="offline", project="p", config={"seed": 0})
for t in steps:
    actor.feed((_QueueItem.RESULT, {"tasks_completed": t, "avg_acc": 1.0 / t, "training_iteration": t}))
actor.feed((_QueueItem.END, None))
actor.feed((_QueueItem.RESULT, {"tasks_completed": 9, "avg_acc": 0.0}))  # after END: ignored
"""


def _actor(root: Path, steps: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    r = subprocess.run([sys.executable, "-c", ACTOR, str(root), steps], env=env, capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_logging_actor_fills_lost_reports_and_replays_a_cut_short_run(tmp_path):
    """The actor the sweep's W&B callback runs, fed as Tune feeds it (without Ray): a report lost
    with a killed trial process (task 2) is rebuilt from the trial's checkpoint; a second run of
    the same trial (a restored trial after a killed driver) logs the first one's rows again and
    moves the first out of the offline-run-* pattern."""
    import torch

    acc = [[1.0], [0.9, 0.95], [0.8, 0.9, 0.99], [0.7, 0.8, 0.9, 0.97]]
    ckpt = tmp_path / "trials" / "search" / "t1" / "checkpoint" / "state.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"acc_rows": acc[:3], "val_rows": acc[:3], "config": {"data": {"val_fraction": 0.1}}}, ckpt)
    _actor(tmp_path, "1,3")
    (first,) = tmp_path.glob("wandb/offline-run-*-t1/run-t1.wandb")
    rows = history_rows(first)
    assert [r["tasks_completed"] for r in rows] == [1, 2, 3]
    assert rows[1]["avg_acc"] == pytest.approx((0.9 + 0.95) / 2)  # task 2: rebuilt from the checkpoint
    assert rows[1]["val_avg_acc"] == pytest.approx((0.9 + 0.95) / 2)

    torch.save({"acc_rows": acc, "val_rows": acc, "config": {"data": {"val_fraction": 0.1}}}, ckpt)
    _actor(tmp_path, "4")
    (second,) = tmp_path.glob("wandb/offline-run-*-t1/run-t1.wandb")
    assert second != first and not first.exists()
    assert list(tmp_path.glob("wandb/replaced-run-*-t1/run-t1.wandb"))
    rows = history_rows(second)
    assert [r["tasks_completed"] for r in rows] == [1, 2, 3, 4] and is_finished(second)
    assert [r["avg_acc"] for r in rows[:3]] == [r["avg_acc"] for r in history_rows(
        next(tmp_path.glob("wandb/replaced-run-*-t1/run-t1.wandb")))]
    assert summary_of(second)["avg_acc"] == pytest.approx(1 / 4)
