"""The base config is a candidate: the search asks for it first, and the confirm phase runs it over the seeds.

Driven without a cluster: Ray's searcher API (``suggest``) and the driver's pure functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pah.config import config_id
from sweeps.spec import spec_from_dict

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from sweeps.driver import confirm_jobs, select_candidates  # noqa: E402  (needs Ray)
from sweeps.search import SequenceOptunaSearch, base_point, in_space  # noqa: E402

# split-digits-pah: train.lr 0.002, train.head_lr 0.002, method.lambda_kd 0.5, method.prototype_size 10
SPACE = {
    "train.lr": {"loguniform": [0.0005, 0.01]},
    "method.lambda_kd": {"uniform": [1.0, 2.0]},  # the base's 0.5 lies outside
    "method.prototype_size": {"choice": [5, 10, 16]},
}


def _spec(**fields):
    return spec_from_dict({"base": "split-digits-pah", "set": {"train.epochs_per_task": 1}, "space": SPACE, **fields})


def test_in_space():
    assert in_space(0.002, "loguniform", (0.0005, 0.01)) and not in_space(0.02, "loguniform", (0.0005, 0.01))
    assert in_space(3, "int", (1, 5)) and not in_space(3.5, "int", (1, 5)) and not in_space(6, "int", (1, 5))
    assert in_space(10, "choice", (5, 10, 16)) and not in_space(11, "choice", (5, 10, 16))
    assert in_space("a", "choice", ("a", "b")) and not in_space(True, "choice", (1, 2)) and in_space(True, "choice", (True,))
    assert not in_space(None, "uniform", (0.0, 1.0))


def test_base_point_takes_the_base_values_that_lie_in_the_space():
    spec = _spec()
    base = base_point(spec)
    assert base["values"] == {"train.lr": 0.002, "method.lambda_kd": 0.5, "method.prototype_size": 10}
    assert base["point"] == {"train.lr": 0.002, "method.prototype_size": 10}
    assert base["outside"] == ["method.lambda_kd"]
    assert base["config_id"] == config_id(spec.trial_config())
    # setting the base's own values explicitly is the same config: the confirm phase finds the search's base trial
    assert config_id(spec.trial_config(base["values"])) == base["config_id"]


def _searcher(point):
    from ray import tune

    s = SequenceOptunaSearch(metric="val_avg_acc", mode="max", base_point=point)
    space = {"train.lr": tune.loguniform(0.0005, 0.01), "method.lambda_kd": tune.uniform(1.0, 2.0),
             "method.prototype_size": tune.choice([5, 10, 16])}
    assert s.set_search_properties("val_avg_acc", "max", space)
    return s


def test_optuna_asks_for_the_base_first_then_samples():
    point = {"train.lr": 0.002, "method.prototype_size": 10}
    s = _searcher(point)
    first = s.suggest("t0")
    assert first["train.lr"] == 0.002 and first["method.prototype_size"] == 10
    assert 1.0 <= first["method.lambda_kd"] <= 2.0  # outside the space in the base: sampled
    assert s._ot_study.trials[0].user_attrs == {"pah_base_config": True}
    others = [s.suggest(f"t{i}") for i in range(1, 4)]
    assert all(o["train.lr"] != 0.002 for o in others)
    # a whole base point works the same; no base point, no enqueued trial
    whole = _searcher({**point, "method.lambda_kd": 1.5}).suggest("t0")
    assert whole == {"train.lr": 0.002, "method.prototype_size": 10, "method.lambda_kd": 1.5}
    assert not _searcher(None)._ot_study.trials


def test_optuna_searcher_survives_save_and_restore_without_asking_twice(tmp_path):
    s = _searcher({"train.lr": 0.002, "method.prototype_size": 10})
    s.suggest("t0")
    s.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher({"train.lr": 0.002, "method.prototype_size": 10})  # as Tune does on a restore
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1")["train.lr"] != 0.002 and len(restored._ot_study.trials) == 2


def _trial(root: Path, tid: str, cid: str, val: float, params: dict) -> str:
    d = root / "trials" / "search" / tid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"params": params, "seed": 0}))
    (d / "result.json").write_text(json.dumps({"schema": 1, "method": "pah", "dataset": "split-digits", "seed": 0,
                                               "config_id": cid, "metrics": {"avg_acc": val},
                                               "val_metrics": {"avg_acc": val}}))
    return str(d)


def test_confirm_runs_the_base_next_to_the_top_k(tmp_path):
    spec = _spec(confirm={"top_k": 2, "seeds": [0, 1, 2]})
    base = base_point(spec)
    b = base["config_id"]
    _trial(tmp_path, "a", "A", 0.95, {"train.lr": 0.003})
    _trial(tmp_path, "c", "C", 0.93, {"train.lr": 0.004})
    # the base was stopped by ASHA in the search (no result): appended, with no search result to reuse
    cands = select_candidates(tmp_path, spec, base=base)
    assert [c["config_id"] for c in cands] == ["A", "C", b]
    assert cands[-1]["base"] and cands[-1]["dir"] is None and cands[-1]["params"] == base["values"]
    state = {"phases": {"confirm": {"candidates": cands, "search_seed": 0}}}
    assert confirm_jobs(spec, state) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]

    # the base finished in the search but is not in the top 2: appended with its search trial, seed 0 reused
    base_dir = _trial(tmp_path, "base", b, 0.90, base["point"])
    cands = select_candidates(tmp_path, spec, base=base)
    assert [c["config_id"] for c in cands] == ["A", "C", b] and cands[-1]["dir"] == base_dir
    state = {"phases": {"confirm": {"candidates": cands, "search_seed": 0}}}
    assert confirm_jobs(spec, state) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]

    # the base is among the top 2: marked, nothing appended
    spec1 = _spec(confirm={"top_k": 1, "seeds": [0, 1]})
    (tmp_path / "trials" / "search" / "base" / "result.json").write_text(json.dumps(
        {"schema": 1, "method": "pah", "dataset": "split-digits", "seed": 0, "config_id": b,
         "metrics": {"avg_acc": 0.99}, "val_metrics": {"avg_acc": 0.99}}))
    cands = select_candidates(tmp_path, spec1, base=base)
    assert [c["config_id"] for c in cands] == [b] and cands[0]["base"]
    # no base given (a sweep from before): the top K only, as before
    assert [c["config_id"] for c in select_candidates(tmp_path, spec)] == [b, "A"]


def test_confirm_param_space_resolves_to_the_jobs():
    from ray.tune.search.variant_generator import generate_variants

    from sweeps.driver import _param_space

    spec = _spec(confirm={"top_k": 2, "seeds": [0, 1, 2]})
    cands = [{"config_id": "A", "dir": "/a", "params": {}}, {"config_id": "B", "dir": None, "params": {}, "base": True}]
    state = {"phases": {"confirm": {"candidates": cands, "search_seed": 0}}}
    configs = [v["config"] for _, v in generate_variants({"config": _param_space(spec, "confirm", state)})]
    assert [(c["candidate"], c["seed"]) for c in configs] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_a_phase_counts_a_trial_ended_by_its_own_directory_when_tunes_snapshot_lacks_done(tmp_path):
    """A trial restored TERMINATED from a snapshot written before its final result (a driver killed
    just then) has no ``done``: its result.json or stopped.json says it ended; an interrupted one
    (TERMINATED, no ``done``, neither file) did not. (CI: a relocated sweep's resume failed with
    '2 of 3 trials ended' though all three had finished.)"""
    from types import SimpleNamespace

    from sweeps.driver import _ended

    def trial(tid, status, done=False):
        (tmp_path / tid).mkdir(exist_ok=True)
        return SimpleNamespace(trial_id=tid, status=status, last_result={"done": True} if done else {"loss": 1.0})

    finished, stopped, cut, err = (trial(t, s) for t, s in
                                   [("fin", "TERMINATED"), ("stp", "TERMINATED"), ("cut", "TERMINATED"), ("err", "ERROR")])
    (tmp_path / "fin" / "result.json").write_text("{}")
    (tmp_path / "stp" / "stopped.json").write_text('{"by": "asha", "tasks_completed": 1, "num_tasks": 5}')
    (tmp_path / "cut" / "log.txt").write_text("trained task 1\n")
    assert [_ended(t, tmp_path) for t in (finished, stopped, cut, err)] == [True, True, False, True]
    assert _ended(trial("live", "RUNNING"), tmp_path) is False
    assert _ended(trial("cut2", "TERMINATED", done=True), tmp_path) is True


@pytest.mark.parametrize("confirm_started", [False, True])
def test_a_search_reopened_for_errored_trials_chooses_its_confirm_configs_again_unless_they_ran(
        tmp_path, capsys, confirm_started):
    """A resume retries search trials that a fault outside them errored. Confirm configs chosen from the
    search without them (a driver stopped before the confirm phase ran) are chosen again once they end;
    a confirm phase that ran already keeps its configs, and the resume says that a retried trial that
    now wins is not confirmed."""
    from sweeps.driver import STATE, _reopen_errored

    spec = spec_from_dict({"base": "split-digits-pah", "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                           "num_samples": 2, "confirm": {"top_k": 1, "seeds": [0, 1]}}, name="t")
    err = tmp_path / "trials" / "search" / "t1"
    err.mkdir(parents=True)
    (err / "error.json").write_text(json.dumps({"type": "StorageUnavailable", "message": "bucket down",
                                                "tasks_done": 1}))
    own = tmp_path / "trials" / "search" / "t2"
    own.mkdir()
    (own / "error.json").write_text(json.dumps({"type": "NonFiniteLoss", "message": "nan", "tasks_done": 0}))
    confirm = {"done": confirm_started, "candidates": [{"config_id": "c0", "dir": None}]}
    if confirm_started:
        confirm["started"] = True
    state = {"spec": spec.to_dict(), "phases": {"search": {"done": True, "started": True}, "confirm": confirm}}
    (tmp_path / STATE).write_text(json.dumps(state))

    _reopen_errored(tmp_path, spec, state)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / STATE).read_text())
    assert "[search] retrying 1 errored trial(s) from their last task checkpoint: t1" in out  # not t2: its own error
    assert saved["phases"]["search"]["done"] is False
    if confirm_started:
        assert saved["phases"]["confirm"]["candidates"] == [{"config_id": "c0", "dir": None}]
        assert "not confirmed over seeds" in out
    else:
        assert "candidates" not in saved["phases"]["confirm"] and "not confirmed" not in out
