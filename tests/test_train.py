"""`pah train` end to end, through the real command line in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_pah


def test_train_split_digits_pah_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_pah("train", "split-digits-pah", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["schema"] == 1 and res["method"] == "pah" and res["dataset"] == "split-digits" and res["seed"] == 0
    R = res["acc_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert all(R[i][j] is None for i in range(5) for j in range(i + 1, 5))
    assert res["metrics"]["avg_acc"] == pytest.approx(sum(R[4]) / 5)
    assert res["metrics"]["avg_acc"] > 0.9  # digits are easy: a broken method would not get there
    assert res["config"]["method"]["name"] == "pah" and len(res["config_id"]) == 12
    assert res["timing"]["images_per_second"] > 0 and res["env"]["device"] == "cpu"
    assert "ACC" in r.stdout


def _rows_in_checkpoint(path):
    try:
        return len(torch.load(path, weights_only=False)["acc_rows"])
    except Exception:  # not there yet
        return 0


def test_killed_run_resumes_to_the_same_matrix(tmp_path):
    args = ["train", "split-digits-pah", "--set", "train.epochs_per_task=30", "--no-progress"]
    ref = run_pah(*args, "--out", str(tmp_path / "ref"), timeout=300)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pah", *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _rows_in_checkpoint(out / "checkpoint" / "state.pt") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists(), "the run finished before it could be killed"
    done = _rows_in_checkpoint(out / "checkpoint" / "state.pt")
    assert 2 <= done < 5

    resumed = run_pah(*args, "--out", str(out), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "ref" / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    assert b["acc_matrix"] == a["acc_matrix"]
    assert b["metrics"] == a["metrics"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["split-digits-nope"], "split-digits-nope"),
        (["split-digits-pah", "--set", "method.name=nope"], "unknown method 'nope'"),
        (["split-digits-pah", "--set", "data.name=imagenet"], "unknown dataset 'imagenet'"),
        (["split-digits-pah", "--set", "train.nope=1"], "unknown key train.nope"),
        (["split-digits-pah", "--set", "train.batch_size=big"], "train.batch_size: expected int"),
        (["split-digits-pah", "--device", "cuda"] if not torch.cuda.is_available() else ["split-digits-pah", "--device", "tpu"], "--device"),
        (["split-cifar100-finetune", "--set", "model.pretrained=false"], "dataset 'split-cifar100' not found; looked in"),
    ],
)
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(tmp_path, args, field):
    out = tmp_path / "out"
    r = run_pah("train", *args, "--out", str(out), env={"PAH_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_non_finite_loss_stops_with_task_epoch_and_step(tmp_path):
    # SGD at lr 1e30 overflows the weights on the first step; the check runs every 100 steps
    # (no per-step host sync) but still names the first bad step
    r = run_pah("train", "split-digits-finetune", "--set", "train.optimizer=sgd", "--set", "train.lr=1e30",
                "--set", "train.head_lr=1e30", "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 1
    assert "non-finite loss at task 1/5, epoch 1, step 2" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "o" / "result.json").exists()


def test_finished_trial_is_not_trained_again(tmp_path):
    out = tmp_path / "o"
    args = ["train", "split-digits-finetune", "--set", "train.epochs_per_task=1", "--out", str(out)]
    assert run_pah(*args).returncode == 0
    mtime = (out / "result.json").stat().st_mtime_ns
    again = run_pah(*args)
    assert again.returncode == 0 and (out / "result.json").stat().st_mtime_ns == mtime
    other = run_pah("train", "split-digits-finetune", "--set", "seed=5", "--out", str(out))
    assert other.returncode == 2 and "holds the result of another config" in other.stderr


def test_learning_rate_warms_up_at_the_start_of_every_task():
    from pah.trial import warmup_factor

    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_packed_trials_match_separate_runs(tmp_path):
    """Trials taking turns step by step in one process end with the matrices each gets alone;
    a failing member ends alone; members of different architectures are refused."""
    from pah.config import load_config
    from pah.errors import UserError
    from pah.trial import run_packed, run_trial

    over = ["train.epochs_per_task=2", "data.num_tasks=3"]
    cfgs = [load_config("split-digits-pah", [*over, f"seed={s}"]) for s in (0, 1)]
    alone = [run_trial(c, tmp_path / f"alone-{i}", device="cpu", progress=False) for i, c in enumerate(cfgs)]
    bad = load_config("split-digits-pah", [*over, "seed=2", "data.num_tasks=99"])  # more tasks than classes
    seen = []
    packed = run_packed([cfgs[0], bad, cfgs[1]], [tmp_path / "p0", tmp_path / "bad", tmp_path / "p1"], device="cpu",
                        on_task_end=lambda i, r: seen.append((i, r.task)))
    assert isinstance(packed[1], UserError) and "classes" in str(packed[1])
    for a, p in zip(alone, [packed[0], packed[2]], strict=True):
        assert p["acc_matrix"] == a["acc_matrix"] and p["val_matrix"] == a["val_matrix"]
    assert json.loads((tmp_path / "p1" / "result.json").read_text())["acc_matrix"] == alone[1]["acc_matrix"]
    assert sorted(seen) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert [t for i, t in seen if i == 0] == [0, 1, 2]
    other = load_config("split-digits-pah", [*over, "model.backbone=reduced-resnet18"])
    with pytest.raises(UserError, match="differ in architecture"):
        run_packed([cfgs[0], other], [tmp_path / "x", tmp_path / "y"], device="cpu")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method", __import__("pah.methods", fromlist=["METHODS"]).METHODS.names())
def test_every_method_resumes_to_the_same_matrix_and_weights(tmp_path, method):
    """A trial stopped after its second task checkpoint and started again ends exactly as the
    uninterrupted one: matrices and every weight and buffer (replay buffers, Fisher, SI's
    importance, ...). In-process and tiny; the SIGKILL test above covers a real kill."""
    from pah.config import load_config
    from pah.trial import CHECKPOINT, run_trial

    cfg = load_config(f"split-digits-{method}", ["train.epochs_per_task=1", "data.num_tasks=3"])
    ref = run_trial(cfg, tmp_path / "ref", device="cpu", progress=False)

    def stop_after_two(report):
        if report.task == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_trial(cfg, tmp_path / "cut", device="cpu", on_task_end=stop_after_two, progress=False)
    assert len(torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)["acc_rows"]) == 2
    resumed = run_trial(cfg, tmp_path / "cut", device="cpu", progress=False)
    assert resumed["acc_matrix"] == ref["acc_matrix"] and resumed["val_matrix"] == ref["val_matrix"]
    a, b = (torch.load(tmp_path / d / CHECKPOINT, weights_only=False)["model"] for d in ("ref", "cut"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_joint_tests_every_seen_task_with_the_statistics_of_the_mixture_it_trained_on(tmp_path):
    """Joint training's weights after task t fit the mixture of tasks 0..t, so under the default
    train.batchnorm=task every seen task is tested with that mixture's BatchNorm statistics: the
    same matrix as batchnorm=adapt. (Before: each task's own statistics from when it ended, which
    the later weights no longer fit; the matrices differed.)"""
    sets = ["train.epochs_per_task=2", "data.num_tasks=3", "model.backbone=small-cnn"]
    matrices = {}
    for name, extra in [("task", []), ("adapt", ["train.batchnorm=adapt"])]:
        out = tmp_path / name
        args = [a for kv in [*sets, *extra] for a in ("--set", kv)]
        r = run_pah("train", "split-digits-joint", "--device", "cpu", "--no-progress", "--out", str(out), *args)
        assert r.returncode == 0, r.stderr[-2000:]
        matrices[name] = json.loads((out / "result.json").read_text())["acc_matrix"]
    assert matrices["task"] == matrices["adapt"]


def test_result_env_names_the_ray_node_by_ip_and_by_id(monkeypatch):
    """Under Ray, result.json's env says which node ran the trial: its IP, and its node id, which
    tells apart nodes that share an IP (several Ray nodes on one host, as in tests/test_autoscale.py).
    Outside Ray, neither."""
    from types import SimpleNamespace

    from pah.trial import _env

    ray = SimpleNamespace(is_initialized=lambda: True, util=SimpleNamespace(get_node_ip_address=lambda: "10.0.0.7"),
                          get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "ab" * 28))
    monkeypatch.setitem(sys.modules, "ray", ray)
    env = _env(torch.device("cpu"))
    assert env["node_ip"] == "10.0.0.7" and env["node_id"] == "ab" * 28
    monkeypatch.delitem(sys.modules, "ray")
    assert not {"node_ip", "node_id"} & _env(torch.device("cpu")).keys()
