"""What keeps a 1,000-trial sweep usable: the live copy of the Optuna study and the progress summary.

The sweep-level checks (optuna.db current mid-sweep and after a killed driver) are in
tests/test_sweep_e2e.py; the figures at scale come from bench/scale.py (bench/RESULTS.md).
"""

from __future__ import annotations

import re
import sqlite3
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")
optuna = pytest.importorskip("optuna")


def _study_with_three_ended_trials():
    study = optuna.create_study(study_name="s", direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for i, state in enumerate(("complete", "pruned", "fail")):
        t = study.ask(dist)
        t.report(0.5 + i / 10, step=1)
        study.tell(t, 0.9 if state == "complete" else None, state=getattr(optuna.trial.TrialState, state.upper()))
    study.ask(dist)  # running: never mirrored
    return study


def _mirrored(db):
    with sqlite3.connect(db) as c:
        return sorted(c.execute(
            "select t.state, a.value_json from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
            "where a.key = 'tune_trial_id'").fetchall())


def test_study_mirror_appends_ended_trials_once(tmp_path):
    from sweeps.search import StudyMirror

    study = _study_with_three_ended_trials()
    db = tmp_path / "optuna.db"
    mirror = StudyMirror(db, "s", ["maximize"], ["val_avg_acc"])
    for t in study.trials:
        mirror.put(f"id{t.number}", t)
    mirror.put("id0", study.trials[0])  # told again (a restored search): written once
    mirror.flush()
    expected = [("COMPLETE", '"id0"'), ("FAIL", '"id2"'), ("PRUNED", '"id1"')]
    assert _mirrored(db) == expected
    # a new driver process (after a kill) on the same file: what is there is not written again
    again = StudyMirror(db, "s", ["maximize"], ["val_avg_acc"])
    assert again.sync(study, {t.number: f"id{t.number}" for t in study.trials}) == 0
    assert _mirrored(db) == expected
    loaded = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")  # what optuna-dashboard and analyze read
    assert loaded.metric_names == ["val_avg_acc"] and loaded.best_trial.params == study.best_trial.params
    assert loaded.trials[1].intermediate_values == {1: 0.6}


def _trial(tid, status, result=None, lr=0.01):
    return SimpleNamespace(trial_id=tid, status=status, last_result=result or {}, config={"train.lr": lr}, path=None)


def _result(acc, done=5):
    return {"val_avg_acc": acc, "avg_acc": acc, "forgetting": 0.1, "tasks_completed": done, "num_tasks": 5}


@pytest.mark.parametrize("total", [10, 1000])
def test_progress_summarises_large_phases(tmp_path, capsys, total):
    from sweeps.progress import ConciseProgress

    p = ConciseProgress("search", "val_avg_acc", "max", sweep_dir=str(tmp_path), total=total, scheduler="asha")
    trials = [_trial(f"t{i}", "PENDING") for i in range(4)]
    for t in trials:
        (tmp_path / "trials" / "search" / t.trial_id).mkdir(parents=True)
    for t in trials[:3]:
        t.status = "RUNNING"
        p.on_trial_start(0, trials, t)
    ends = [("t0", _result(0.8)), ("t1", _result(0.6, done=1)), ("t2", _result(0.9))]
    for tid, r in ends:
        t = next(t for t in trials if t.trial_id == tid)
        t.last_result = r
        p.on_trial_result(0, trials, t, r)  # as Tune does: the last result, then the end
        p.on_trial_complete(0, trials, t)
        t.status = "TERMINATED"
    p._t0 -= 60  # a minute into the phase: 3 trials a minute
    status = p.status(trials)
    p.on_experiment_end(trials)
    out = capsys.readouterr().out
    if total == 10:  # a small phase: a line per start and end, as before
        assert re.findall(r"(t\d) start ", out) == ["t0", "t1", "t2"]
        assert re.findall(r"(t\d) finished ", out) == ["t0", "t2"] and "t1 stopped early by asha" in out
    else:  # a large one: only new bests, then the status line
        assert not re.findall(r"t\d (start|finished) ", out) and "stopped early by" not in out
        assert re.findall(r"(t\d) new best", out) == ["t0", "t2"]
        assert out.strip().splitlines()[-1].endswith(status)
    assert re.match(rf"3/{total} trials ended \(2 finished, 1 stopped early, 0 errored\), 0 running, "
                    rf"{total - 3} to start \| best val_avg_acc 0.9000 \(t2\) \| 3.0 trials/min, ETA ", status), status
    restored = ConciseProgress("search", "val_avg_acc", "max", sweep_dir=str(tmp_path), total=total)
    assert "best val_avg_acc 0.9000 (t2)" in restored.status(trials)  # a resumed phase knows its best
    with pytest.raises(ValueError, match="verbosity"):
        ConciseProgress("search", "m", "max", sweep_dir=str(tmp_path), verbosity="loud")
