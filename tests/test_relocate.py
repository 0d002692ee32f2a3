"""A sweep resumes where it lies: moved (`mv`), copied (`cp -a`), or with a damaged tuner.pkl.

One tiny sweep is killed mid-search (one trial finished, the next half-trained and known to
Tune's snapshot); each test resumes its own copy of it elsewhere, with real Ray processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_sweep_e2e import Sweep, _in_optuna_db, _log_lines, _results, _wait_for, _write_spec

from conftest import check_wandb_runs

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

NUM_SAMPLES = 3


def _hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), directory (-> "dir") and symlink (-> its target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        else:
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def _killed_once(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """A sweep killed (SIGKILL, driver and Ray) with one finished search trial and one half-trained:
    (its directory, a pristine copy of it elsewhere, the names of its finished trials)."""
    root = tmp_path_factory.mktemp("relocate")
    spec = _write_spec(
        root / "three.yaml",
        # a trial of some seconds: one must be caught half-trained and in Tune's snapshot (taken every 2 s);
        # at 1 epoch a task a trial took about 1 s and the whole search could end unseen
        set={"train.epochs_per_task": 6},
        space={"train.lr": {"loguniform": [0.001, 0.005]}},
        searcher="optuna-tpe", num_samples=NUM_SAMPLES, max_concurrent=1, scheduler="none",
        confirm={"top_k": 0}, wandb={"mode": "offline"},
    )
    run = Sweep([str(spec), "--storage", str(root), "--name", "orig"], root, root / "out1.txt")
    sweep = root / "orig"

    def known_to_tune(d: Path) -> bool:  # in the last good snapshot, the one a restore starts from
        snaps = (sweep / "tune" / "search" / ".pah-snapshot").glob("experiment_state-*.json")
        return any(d.name in p.read_text(errors="ignore") for p in snaps)

    def mid_search():
        trials = list((sweep / "trials" / "search").glob("*"))
        done = [d for d in trials if (d / "result.json").exists()]
        busy = [d for d in trials if not (d / "result.json").exists()
                and any("trained task" in ln for ln in _log_lines(d)) and known_to_tune(d)]
        return done if done and busy else None

    _wait_for(mid_search, 240, "one finished and one half-trained trial", run)
    run.kill_driver()
    run.close()
    done = {d.name for d in (sweep / "trials" / "search").glob("*") if (d / "result.json").exists()}
    assert len(done) < NUM_SAMPLES
    pristine = root / "pristine"
    subprocess.run(["cp", "-a", str(sweep), str(pristine)], check=True)
    return sweep, pristine, done


@pytest.fixture
def killed(_killed_once) -> tuple[Path, set[str]]:
    """The killed sweep, in the directory it ran in (its absolute path in Tune's state), as the kill left it."""
    sweep, pristine, done = _killed_once
    shutil.rmtree(sweep, ignore_errors=True)
    subprocess.run(["cp", "-a", str(pristine), str(sweep)], check=True)
    return sweep, done


def _check_resumed(sweep: Path, out: str, done: set[str], before: dict[str, str]) -> None:
    """num_samples search trials, finished ones untouched, W&B runs in this sweep's own wandb/."""
    assert out.splitlines()[0] == f"sweep: {sweep}"
    assert " ERROR " not in out and "errored" not in out.replace("0 errored", ""), out[-3000:]
    results = _results(sweep, "search")
    assert len(results) == NUM_SAMPLES, sorted(results)
    for name in done:  # finished before the kill: the same file, not one task trained again
        rel = f"trials/search/{name}/result.json"
        assert hashlib.sha256((sweep / rel).read_bytes()).hexdigest() == before[rel]
        assert not [ln for ln in _log_lines(sweep / "trials" / "search" / name) if "trained task" in ln
                    and ln not in before["_logs"][name]]
    assert check_wandb_runs(sweep, "search") == NUM_SAMPLES  # each trial once, in SWEEP/wandb
    ids = _in_optuna_db(sweep)  # and once in this sweep's optuna.db
    assert len(ids) == len(set(ids)) and set(results) <= set(ids), ids
    assert json.loads((sweep / "sweep.json").read_text())["phases"]["search"]["done"]


def _logs(sweep: Path, done: set[str]) -> dict[str, list[str]]:
    return {name: _log_lines(sweep / "trials" / "search" / name) for name in done}


@pytest.mark.slow
def test_a_copied_sweep_resumes_in_the_copy_and_the_original_is_untouched(killed, tmp_path):
    original, done = killed
    before = _hashes(original)
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    expected = {**before, "_logs": _logs(copy, done)}

    rc, out = Sweep(["--resume", str(copy)], tmp_path, tmp_path / "out.txt").wait(timeout=300)
    assert rc == 0, out[-4000:]
    _check_resumed(copy, out, done, expected)
    assert _hashes(original) == before  # byte for byte: no W&B run, trial or snapshot written there


@pytest.mark.slow
def test_a_moved_sweep_with_a_damaged_tuner_pkl_resumes_where_it_lies(killed, tmp_path):
    """`mv` to another path, and tune/search/tuner.pkl truncated: rebuilt from sweep.json and Tune's state."""
    original, done = killed
    expected = {**_hashes(original), "_logs": _logs(original, done)}
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(original), str(moved)], check=True)
    pkl = moved / "tune" / "search" / "tuner.pkl"
    pkl.write_bytes(pkl.read_bytes()[:100])

    rc, out = Sweep(["--resume", str(moved)], tmp_path, tmp_path / "out.txt").wait(timeout=300)
    assert rc == 0, out[-4000:]
    assert f"{pkl} is damaged" in out and "rebuilding it from sweep.json" in out
    _check_resumed(moved, out, done, expected)
    assert not original.exists()  # nothing written at the old path


def test_a_damaged_tuner_pkl_without_tune_state_is_one_error_naming_it(tmp_path):
    from pah.errors import Failed
    from sweeps.driver import _tuner_pkl_damaged

    (tmp_path / "tuner.pkl").write_bytes(b"\x80\x05\x95")  # a pickle cut short
    with pytest.raises(Failed, match=rf"{tmp_path / 'tuner.pkl'} is damaged \(.*\) and .* holds no Tune experiment"):
        _tuner_pkl_damaged(tmp_path, "search")


def test_new_trials_of_a_restored_search_take_its_current_storage(tmp_path):
    """What TuneController.resume gets patched with: both kinds of search state (an Optuna-style Searcher
    in a SearchGenerator, the confirm phase's grid in a BasicVariantGenerator) create their next trial
    under the experiment's current storage path, not the one they were first given."""
    from ray import tune
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator, Searcher
    from ray.tune.search.search_generator import SearchGenerator

    from sweeps.snapshot import _repoint

    class One(Searcher):
        def suggest(self, trial_id):
            return {"lr": 0.1}

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    def trainable(config):
        pass

    for alg in (BasicVariantGenerator(), SearchGenerator(One(metric="m", mode="max"))):
        old = Experiment("search", trainable, config={"job": tune.grid_search([0, 1])},
                         storage_path=str(tmp_path / "old" / "tune"))
        alg.add_configurations([old])
        _repoint(alg, StorageContext(storage_path=str(tmp_path / "new" / "tune"), experiment_dir_name="search"))
        trial = alg.next_trial()
        assert trial.storage.storage_fs_path == str(tmp_path / "new" / "tune"), type(alg)
        assert trial.storage.experiment_dir_name == "search"


@pytest.mark.slow
def test_a_restored_trial_keeps_its_metadata_json_unless_its_storage_moved(tmp_path):
    """What Trial.restore_run_metadata and Trial.set_storage get patched with: a restored trial's metadata
    JSON is the one it was restored from (no re-encoding of every trial at the first snapshot), and
    pointing the trial at a new place re-encodes its checkpoints' new paths, as Ray does unpatched."""
    import ray
    from ray import tune
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment.trial import Trial

    from sweeps.snapshot import restored_trials_keep_their_json

    assert restored_trials_keep_their_json()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tune.register_trainable("pah_relocate_probe", lambda config: None)
        old = StorageContext(storage_path=str(tmp_path / "old"), experiment_dir_name="search", trial_dir_name="t0")
        trial = Trial("pah_relocate_probe", config={"lr": 0.1}, storage=old,
                      placement_group_factory=tune.PlacementGroupFactory([{"CPU": 1}]))
        trial.create_placement_group_factory()  # as TuneController.add_trial does
        ckpt = Checkpoint(path=f"{old.trial_fs_path}/checkpoint_000000")
        trial.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint=ckpt, metrics={"x": 1}))
        trial.run_metadata.last_result = {"val_avg_acc": 0.5}
        state, meta = trial.get_json_state()

        restored = Trial.from_json_state(state)
        restored.restore_run_metadata(meta)
        assert restored.run_metadata._cached_json == meta
        restored.run_metadata.invalidate_cache()  # what Ray would encode: the same string
        assert restored.run_metadata.get_json_state() == meta

        again = Trial.from_json_state(state)
        again.restore_run_metadata(meta)
        same = StorageContext(storage_path=str(tmp_path / "old"), experiment_dir_name="search", trial_dir_name="t0")
        again.set_storage(same)  # where it was: the cache stays
        assert again.run_metadata._cached_json == meta
        moved = StorageContext(storage_path=str(tmp_path / "new"), experiment_dir_name="search", trial_dir_name="t0")
        again.set_storage(moved)  # moved: its checkpoint's new path is what the next snapshot writes
        new_meta = again.get_json_state()[1]
        assert new_meta != meta and str(tmp_path / "old") not in new_meta, new_meta[:500]
        assert again.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint.path.startswith(
            str(tmp_path / "new"))
    finally:
        ray.shutdown()
