"""Sweep specs are validated and sampled without a cluster; bad specs are exit 2 with the field named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pah.config import config_id
from pah.errors import UserError
from sweeps.driver import read_results, select_candidates, summary_table
from sweeps.spec import load_spec, spec_from_dict, spec_names

GOOD = {
    "base": "split-digits-pah",
    "set": {"train.epochs_per_task": 1},
    "space": {"train.lr": {"loguniform": [0.001, 0.01]}},
}


def test_shipped_specs_load_and_validate():
    names = spec_names()
    for required in ("quickstart", "split-cifar100-pah", "tiny-imagenet-pah", "baselines", "split-fashion-mnist-pah"):
        assert required in names
    for name in names:
        spec = load_spec(name)
        assert spec.name == name
        cfg = spec.trial_config()  # the base config resolves
        assert cfg.seed == 0


def test_quickstart_is_small():
    spec = load_spec("quickstart")
    assert spec.num_samples <= 6 and spec.max_concurrent == 2
    assert spec.trial_config().train.epochs_per_task <= 2
    assert spec.confirm.top_k == 2 and len(spec.confirm.seeds) >= 2


def test_set_splits_spec_fields_from_config_keys():
    spec = load_spec("quickstart", ["num_samples=2", "confirm.top_k=1", "scheduler.name=none", "wandb.enabled=false",
                                     "train.epochs_per_task=1", "seed=3"])
    assert spec.num_samples == 2 and spec.confirm.top_k == 1 and spec.scheduler.name == "none"
    assert not spec.wandb.enabled
    cfg = spec.trial_config({"train.lr": 0.004}, seed=None)
    assert cfg.train.epochs_per_task == 1 and cfg.seed == 3 and cfg.train.lr == 0.004
    assert spec.trial_config(seed=7).seed == 7


def test_seeds_share_a_config_id():
    spec = spec_from_dict(GOOD)
    a, b = spec.trial_config({"train.lr": 0.002}, 0), spec.trial_config({"train.lr": 0.002}, 1)
    assert config_id(a) == config_id(b) and a.seed != b.seed
    assert config_id(spec.trial_config({"train.lr": 0.003}, 0)) != config_id(a)


def test_nested_space_and_method_switch():
    spec = spec_from_dict({"base": "split-digits-pah", "searcher": "grid",
                           "space": {"method": {"name": {"choice": ["pah", "lwf", "finetune"]}}}})
    assert list(spec.space) == ["method.name"]
    assert spec.trial_config({"method.name": "lwf"}).method.name == "lwf"


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"base": None}, "spec.base"),
        ({"base": "no-such-preset"}, "spec.base"),
        ({"searcher": "hyperopt"}, "spec.searcher"),
        ({"space": {"train.lr": {"normal": [0, 1]}}}, "spec.space.train.lr"),
        ({"space": {"train.lr": {"uniform": [0.1]}}}, "spec.space.train.lr"),
        ({"space": {"train.lr": {"uniform": [0.2, 0.1]}}}, "spec.space.train.lr"),
        ({"space": {"train.lr": {"loguniform": [0, 0.1]}}}, "spec.space.train.lr"),
        ({"space": {"train.nope": {"uniform": [0.1, 0.2]}}}, "spec.space.train.nope"),
        ({"space": {"train.lr": {"uniform": [-1.0, 0.1]}}}, "spec.space.train.lr"),
        ({"space": {"train.batch_size": {"int": [1.5, 4]}}}, "spec.space.train.batch_size"),
        ({"space": {}}, "spec.space"),
        ({"metric": "accuracy"}, "spec.metric"),
        ({"mode": "up"}, "spec.mode"),
        ({"searcher": "optuna-multi", "metric": "val_avg_acc", "mode": "max"}, "spec.metric"),
        ({"metric": ["avg_acc", "forgetting"], "mode": ["max", "min"]}, "spec.metric"),
        ({"num_samples": 0}, "spec.num_samples"),
        ({"max_concurrent": "two"}, "spec.max_concurrent"),
        ({"scheduler": {"name": "pbt"}}, "spec.scheduler.name"),
        ({"scheduler": {"name": "asha", "grace": 1}}, "spec.scheduler"),
        ({"resources": {"gpus": -1}}, "spec.resources.gpus"),
        ({"resources": {"gpus": 1.5}}, "spec.resources.gpus"),
        ({"confirm": {"top_k": 2}}, "spec.confirm.seeds"),
        ({"confirm": {"top_k": 2, "seeds": [0, 0]}}, "spec.confirm.seeds"),
        ({"wandb": {"api_key": "x"}}, "spec.wandb.api_key"),
        ({"wandb": {"mode": "cloud"}}, "spec.wandb.mode"),
        ({"set": {"train.epochs_per_task": 0}}, "train.epochs_per_task"),
        ({"searcher": "grid"}, "spec.space.train.lr"),
    ],
)
def test_bad_specs_name_the_field(patch, field):
    raw = {**GOOD, **patch}
    with pytest.raises(UserError) as e:
        spec_from_dict(raw)
    assert field in str(e.value)


def test_bad_spec_file_is_exit_2_and_writes_nothing(tmp_path, pah_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "space": {"train.lr": {"gaussian": [0, 1]}}}))
    r = pah_cli("sweep", str(bad), "--storage", str(tmp_path / "out"), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "spec.space.train.lr" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()

    r = pah_cli("sweep", "no-such-spec", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "quickstart" in r.stderr
    r = pah_cli("sweep", "quickstart", "--set", "train.nope=1", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "train.nope" in r.stderr and "Traceback" not in r.stderr
    r = pah_cli("sweep", "--resume", str(tmp_path), cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "not a sweep directory" in r.stderr


def test_pah_cli_imports_no_ray():
    import subprocess

    code = ("import sys, pah.cli; pah.cli.build_parser(); "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('ray','optuna','wandb')]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _fake_trial(root: Path, tid: str, params: dict, seed: int, acc: float, val_acc: float, fm: float, cid: str) -> Path:
    d = root / "trials" / "search" / tid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"params": params, "seed": seed}))
    (d / "result.json").write_text(json.dumps({
        "schema": 1, "method": "pah", "dataset": "split-digits", "seed": seed, "config_id": cid,
        "metrics": {"avg_acc": acc, "forgetting": fm, "bwt": -fm},
        "val_metrics": {"avg_acc": val_acc, "forgetting": fm, "bwt": -fm},
    }))
    return d


def test_select_candidates_ranks_by_validation_and_dedups(tmp_path):
    spec = spec_from_dict({**GOOD, "confirm": {"top_k": 2, "seeds": [0, 1]}})
    _fake_trial(tmp_path, "a", {"train.lr": 0.001}, 0, 0.9, 0.70, 0.1, "A")
    _fake_trial(tmp_path, "b", {"train.lr": 0.002}, 0, 0.5, 0.95, 0.1, "B")
    _fake_trial(tmp_path, "c", {"train.lr": 0.002}, 0, 0.5, 0.94, 0.1, "B")  # same config again
    _fake_trial(tmp_path, "d", {"train.lr": 0.003}, 0, 0.8, 0.80, 0.1, "D")
    (tmp_path / "trials" / "search" / "stopped").mkdir()  # stopped by ASHA: no result.json
    got = select_candidates(tmp_path, spec)
    assert [c["config_id"] for c in got] == ["B", "D"]
    assert got[0]["params"] == {"train.lr": 0.002}


def test_select_candidates_multi_objective_prefers_the_front(tmp_path):
    spec = spec_from_dict({**GOOD, "searcher": "optuna-multi", "confirm": {"top_k": 2, "seeds": [0, 1]}})
    _fake_trial(tmp_path, "a", {"train.lr": 0.001}, 0, 0.9, 0.90, 0.30, "A")  # front
    _fake_trial(tmp_path, "b", {"train.lr": 0.002}, 0, 0.9, 0.85, 0.01, "B")  # front
    _fake_trial(tmp_path, "c", {"train.lr": 0.003}, 0, 0.9, 0.89, 0.31, "C")  # dominated by A
    assert [c["config_id"] for c in select_candidates(tmp_path, spec)] == ["A", "B"]


def _finished(root: Path, phase: str, tid: str, lr: float, seed: int, acc: float, fm: float, cid: str) -> None:
    """A finished trial with a real result: 2 tasks, R = [[acc + fm], [acc, acc]] (ACC acc, forgetting fm)."""
    from pah.metrics import summarize

    d = root / "trials" / phase / tid
    d.mkdir(parents=True)
    R = [[acc + fm, None], [acc, acc]]
    (d / "params.json").write_text(json.dumps({"params": {"train.lr": lr}, "seed": seed}))
    (d / "result.json").write_text(json.dumps({
        "schema": 1, "method": "pah", "dataset": "split-digits", "seed": seed, "config_id": cid,
        "config": {"data": {"name": "split-digits", "num_tasks": 2}, "method": {"name": "pah"}, "train": {"lr": lr}},
        "acc_matrix": R, "metrics": summarize(R), "val_metrics": summarize(R)}))


def _sweep_json(root: Path, spec, confirm: dict) -> None:
    (root / "sweep.json").write_text(json.dumps({"schema": 1, "spec": spec.to_dict(), "base": None,
                                                 "phases": {"search": {"done": True}, "confirm": confirm}}))


def test_the_sweeps_table_groups_seeds(tmp_path):
    """What a sweep without a confirm phase prints at its end: every config, its seeds averaged (analysis)."""
    _sweep_json(tmp_path, spec_from_dict(GOOD), {"done": False})
    _finished(tmp_path, "search", "a", 0.001, 0, 0.90, 0.10, "A" * 12)
    _finished(tmp_path, "search", "b", 0.001, 1, 0.80, 0.20, "A" * 12)
    _finished(tmp_path, "search", "c", 0.002, 0, 0.50, 0.30, "C" * 12)
    (tmp_path / "trials" / "search" / "stopped").mkdir()  # stopped by ASHA: no result.json
    (tmp_path / "trials" / "search" / "stopped" / "stopped.json").write_text(json.dumps(
        {"by": "asha", "tasks_completed": 1, "num_tasks": 2}))
    text = summary_table(read_results(tmp_path))
    rows = text.splitlines()
    assert rows[1] == "all configs, seed-averaged:"
    assert "ACC %" in text and "Forgetting %" in text
    a_row = next(r for r in rows if r.startswith("A" * 12))
    assert a_row.split()[1:3] == ["0.001", "2"] and "85.00 ± 7.07" in a_row and "15.00 ± 7.07" in a_row
    c_row = next(r for r in rows if r.startswith("C" * 12))
    assert c_row.split()[1:5] == ["0.002", "1", "50.00", "±"] and c_row.split()[5] == "n/a"  # one seed: no std
    assert "  search: 4 trial(s): 3 finished, 1 stopped early by asha (after task 1/2 x1)" in rows


def test_the_sweeps_table_holds_the_confirmed_runs_only(tmp_path):
    """With a confirm phase: the candidates' confirm runs and their reused search trials (the search seed is a
    confirm seed), not the search trials of configs that were not confirmed."""
    spec = spec_from_dict({**GOOD, "confirm": {"top_k": 1, "seeds": [0, 1]}})
    _finished(tmp_path, "search", "a", 0.001, 0, 0.90, 0.10, "A" * 12)
    _finished(tmp_path, "search", "c", 0.002, 0, 0.50, 0.30, "C" * 12)  # not a candidate
    _finished(tmp_path, "confirm", "a1", 0.001, 1, 0.80, 0.20, "A" * 12)
    cands = [{"dir": str(tmp_path / "trials" / "search" / "a"), "config_id": "A" * 12, "params": {"train.lr": 0.001}}]
    _sweep_json(tmp_path, spec, {"done": True, "candidates": cands, "search_seed": 0})
    text = summary_table(read_results(tmp_path))
    assert text.splitlines()[1] == "confirmed configs, seed-averaged:"
    assert "C" * 12 not in text
    a_row = next(r for r in text.splitlines() if "A" * 12 in r)
    assert " 2 " in a_row and "85.00 ± 7.07" in a_row


def test_saved_spec_round_trips_through_json():
    """sweep.json keeps the resolved spec; resuming rebuilds exactly the same spec from it."""
    for name in spec_names():
        spec = load_spec(name, ["num_samples=3"])
        saved = json.loads(json.dumps(spec.to_dict()))
        assert saved == spec.to_dict()
        assert spec_from_dict(dict(saved), name=saved["name"], check_configs=False) == spec


def test_snapshot_guard_restores_half_written_files(tmp_path):
    pytest.importorskip("ray.tune")
    import pickle

    from sweeps.snapshot import backup, repair

    state = json.dumps({"trial_data": [["t"] * 3], "runner_data": {}, "stats": {"start_time": 1.5}})  # Tune's layout
    (tmp_path / "experiment_state-1.json").write_text(state)
    (tmp_path / "searcher-state-1.pkl").write_bytes(pickle.dumps({"study": 1}))
    backup(tmp_path)
    (tmp_path / "experiment_state-1.json").write_text("")  # truncated by a kill mid-copy
    (tmp_path / "searcher-state-1.pkl").write_bytes(pickle.dumps({"study": 2}))  # complete: kept as it is
    backup(tmp_path)  # a broken file never replaces its good copy
    assert repair(tmp_path) == ["experiment_state-1.json"]
    assert (tmp_path / "experiment_state-1.json").read_text() == state
    assert pickle.loads((tmp_path / "searcher-state-1.pkl").read_bytes()) == {"study": 2}
    (tmp_path / "experiment_state-1.json").write_text(state[:-20])  # cut mid-file: not copied, repaired
    backup(tmp_path)
    assert json.loads((tmp_path / ".pah-snapshot" / "experiment_state-1.json").read_text())["stats"]
    assert repair(tmp_path) == ["experiment_state-1.json"] and (tmp_path / "experiment_state-1.json").read_text() == state
