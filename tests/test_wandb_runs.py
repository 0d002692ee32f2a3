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
