"""Processes that never train leave torch out (issue 23): validating configs and specs, ``pah sweep
--help``, ``pah analyze``, and the whole ``pah sweep`` driver. Only the trials import torch, in their
workers. Each check runs a fresh interpreter, so what an earlier test imported cannot hide an import.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: runs ``code``, then prints the heavy modules it left in sys.modules, as JSON
PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in ("torch", "torchvision") if m in sys.modules)))
"""


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (one this test started)."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, s = (int(x) for x in line.split())
        if s == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _heavy_after(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_config_and_spec_validation_leave_torch_out():
    """Every shipped spec (studies too: their methods' params and default spaces) and every preset
    is validated without torch; a bad one is the same UserError without it."""
    code = """
from pah.config import load_config, preset_names
from pah.errors import UserError
from sweeps.spec import load_spec, spec_names
for name in spec_names():
    load_spec(name)
for name in preset_names():
    load_config(name)
for bad in (["method.nope=1"], ["data.name=nope"], ["model.backbone=nope"]):
    try:
        load_config("split-digits-ewc", bad)
    except UserError:
        pass
    else:
        raise AssertionError(bad)
"""
    assert _heavy_after(code) == []


def test_sweep_help_and_analyze_leave_torch_out(tmp_path):
    """``pah sweep --help`` and ``pah analyze`` over a finished trial, each as its own process."""
    from pah.metrics import summarize

    R = [[0.9 if j <= i else None for j in range(5)] for i in range(5)]
    trial = tmp_path / "t"
    trial.mkdir()
    (trial / "result.json").write_text(json.dumps({
        "schema": 1, "method": "pah", "dataset": "split-digits", "seed": 0,
        "config": {"data": {"name": "split-digits"}, "method": {"name": "pah"}}, "config_id": "abc123",
        "acc_matrix": R, "metrics": summarize(R), "timing": {"train_seconds": 1.0, "images_per_second": 1.0},
        "env": {"torch": "2.x", "device": "cpu", "hostname": "h"}}))
    for args in (["sweep", "--help"], ["analyze", str(trial), "--format", "json"]):
        code = f"""
import sys
from pah.cli import main
sys.argv = ["pah", *{args!r}]
try:
    rc = main()
except SystemExit as e:
    rc = e.code
assert rc in (0, None), rc
"""
        assert _heavy_after(code) == [], args


@pytest.mark.slow
def test_the_sweep_driver_process_leaves_torch_out(tmp_path):
    """A whole ``pah sweep`` (Ray, Optuna, W&B offline, the report at its end) of two one-epoch trials:
    the driver process ends without torch, while its trials, in Ray's workers, trained with it."""
    modules = tmp_path / "driver-modules.json"
    code = f"""
import atexit, json, sys
atexit.register(lambda: open({str(modules)!r}, "w").write(json.dumps(sorted(sys.modules))))
from pah.cli import main
sys.argv = ["pah", "sweep", "quickstart", "--storage", {str(tmp_path / "sweeps")!r}, "--name", "tf",
            "--set", "num_samples=2", "--set", "confirm.top_k=0", "--set", "scheduler.name=none",
            "--set", "train.epochs_per_task=1", "--set", "data.num_tasks=2"]
sys.exit(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env.update({"WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"})
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:  # whatever happened, nothing of this sweep's session (its Ray) outlives the test
        _kill_session(proc.pid)
    assert proc.returncode == 0, out[-4000:]
    results = list((tmp_path / "sweeps" / "tf" / "trials").rglob("result.json"))
    assert len(results) == 2 and all(json.loads(p.read_text())["env"]["torch"] for p in results)
    loaded = set(json.loads(modules.read_text()))
    assert "ray" in loaded and "sweeps.driver" in loaded  # the hook ran in the driver itself
    assert not {"torch", "torchvision"} & loaded


def test_the_probe_sees_torch():
    """The probe reports torch once it is in sys.modules (so the checks above can fail; importing the
    real one takes 40 s on a loaded 2-core machine: a stand-in module is put there instead)."""
    assert _heavy_after("sys.modules['torch'] = sys") == ["torch"]
