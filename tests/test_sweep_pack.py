"""`resources.pack`: Tune trials trained together by packer actors give what each trial gives alone."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from test_sweep_e2e import Sweep, _results, _write_spec  # noqa: E402

pytestmark = pytest.mark.slow


def test_packed_sweep_trials_match_trials_run_alone(tmp_path):
    from pah.config import config_from_dict
    from pah.trial import run_trial

    spec = _write_spec(
        tmp_path / "pack.yaml", searcher="random", num_samples=2, max_concurrent=2,
        resources={"cpus": 1, "pack": 2},
        set={"train.epochs_per_task": 2, "data.num_tasks": 3},
        space={"train.lr": {"loguniform": [1e-3, 3e-3]}},
    )
    run = Sweep([str(spec), "--storage", str(tmp_path / "sweeps"), "--name", "p"], tmp_path, tmp_path / "out.txt")
    rc, out = run.wait(timeout=240)
    assert rc == 0, out[-4000:]
    sweep = tmp_path / "sweeps" / "p"
    results = _results(sweep, "search")
    assert len(results) == 2, out[-3000:]
    for trial_id, res in results.items():
        log = (sweep / "trials" / "search" / trial_id / "log.txt").read_text()
        assert "trained task 3/3" in log and "finished" in log
        alone = run_trial(config_from_dict(res["config"]), tmp_path / "alone" / trial_id, device="cpu", progress=False)
        assert res["acc_matrix"] == alone["acc_matrix"] and res["val_matrix"] == alone["val_matrix"], trial_id
    # the table covers the trials like any sweep's
    assert "seed-averaged" in out
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["spec"]["resources"]["pack"] == 2


def test_pack_refuses_a_space_over_architectures(tmp_path):
    from conftest import run_pah

    spec = _write_spec(tmp_path / "bad.yaml", resources={"cpus": 1, "pack": 2},
                       space={"model.backbone": {"choice": ["small-cnn", "reduced-resnet18"]}})
    r = run_pah("sweep", str(spec), "--storage", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.startswith("error: spec.resources.pack") and "model.backbone" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()
