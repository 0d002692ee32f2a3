"""The command line: help everywhere, and `pah train` / `pah bench` without the cluster stack."""

import subprocess
import sys

import pytest

from conftest import run_pah

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ray', 'optuna', 'wandb', 'submitit'}:
            raise ImportError(f'{name} is blocked (as on a GPU box without it)')
sys.meta_path.insert(0, _Block())
from pah.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_train_and_bench_work_without_ray_optuna_wandb_submitit(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK, "train", "split-digits-finetune", "--set", "train.epochs_per_task=1",
                        "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t" / "result.json").exists()
    r = subprocess.run([sys.executable, "-c", BLOCK, "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--batch-size" in r.stdout, r.stderr


@pytest.mark.parametrize("cmd", ["train", "sweep", "launch", "analyze", "bench"])
def test_every_command_explains_itself(cmd):
    r = run_pah(cmd, "--help")
    assert r.returncode == 0 and "usage: pah " + cmd in r.stdout and len(r.stdout.splitlines()) > 5


def test_unknown_command_and_option_exit_2():
    r = run_pah("nope")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = run_pah("train", "--nope")
    assert r.returncode == 2 and "unrecognized arguments: --nope" in r.stderr


def test_list_presets():
    """One preset per (benchmark, method) pair: a method or dataset registered without its preset is missing here."""
    from pah.conf import PARAMS, SHAPES

    r = run_pah("train", "--list")
    expected = {f"{d}-{m}" for d in SHAPES for m in PARAMS.names()}
    assert r.returncode == 0 and sorted(r.stdout.split()) == sorted(expected) and "split-digits-pah" in expected


def test_out_of_memory_is_one_error_line_and_exit_1(monkeypatch, capsys):
    """A GPU running out of memory (torch.OutOfMemoryError, raised here as CUDA would) is a size
    problem, not a bug: one error line naming what to shrink, no traceback, exit 1."""
    import torch

    from pah import bench, cli

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(bench, "run", oom)
    assert cli.main(["bench", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (CUDA out of memory") and "train.batch_size" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_sweeps_error_line_is_said_before_ray_is_shut_down_and_only_once(monkeypatch, capsys):
    """`ray.shutdown()` can end the driver on the spot (Ray's core worker exits when the raylet closes
    their connection mid-disconnect), so the driver says its `error:` line inside `_ray`'s block; the
    CLI's handler then prints nothing more: one line, exit 143 for SIGTERM."""
    import signal

    from pah import cli
    from pah.errors import Interrupted
    from sweeps import cli as sweep_cli
    from sweeps import driver
    from sweeps.interrupts import Interrupts

    said_before_teardown = []

    def run(args):
        interrupts = Interrupts("pah sweep --resume DIR")
        try:
            with driver._said_first(interrupts):
                raise Interrupted("interrupted by SIGTERM (search); resume with: pah sweep --resume DIR", signal.SIGTERM)
        finally:  # where `_ray` calls ray.shutdown()
            said_before_teardown.append(capsys.readouterr().err)

    monkeypatch.setattr(sweep_cli, "run", run)
    assert cli.main(["sweep", "quickstart"]) == 143
    assert said_before_teardown == ["error: interrupted by SIGTERM (search); resume with: pah sweep --resume DIR\n"]
    assert capsys.readouterr().err == ""  # not said twice


_SIGNALLED = """
import os, signal, sys, time
from pah import cli
from sweeps import cli as sweep_cli
from sweeps.interrupts import Interrupts

def run(args):
    when = os.environ["WHEN"]
    if when == "before":  # before the sweep's own handlers (loading the spec)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    interrupts = Interrupts("pah sweep --resume DIR")
    try:
        with interrupts:
            if when == "twice":
                os.kill(os.getpid(), signal.SIGTERM)  # the first: the graceful stop
                raise interrupts.interrupted("search")
    finally:
        if when == "twice":  # the second: after the driver stopped, while the process unwinds
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    return 0

sweep_cli.run = run
sys.argv = ["pah", "sweep", "quickstart"]
code = cli.main()
if os.environ["WHEN"] == "after":  # the outcome decided: the interpreter's exit hooks are left
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
sys.exit(code)
"""


@pytest.mark.parametrize("when,line", [
    ("before", "error: interrupted by SIGTERM"),
    ("twice", "error: interrupted by SIGTERM (again while it ended: ended at once; every trial keeps its last task "
              "checkpoint); resume with: pah sweep --resume DIR"),
    ("after", None),
])
def test_a_sigterm_at_any_moment_ends_the_cli_with_143_never_killed(when, line):
    """Outside the sweep's graceful stop, a SIGTERM must still end `pah` with 143 and its error: line,
    never by the default action (-15, no line: seen when a second SIGTERM came after the driver had
    shut Ray down)."""
    import os

    proc = subprocess.run([sys.executable, "-c", _SIGNALLED], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WHEN": when})
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    if line is None:
        assert errors == [], proc.stderr
    else:
        assert errors and errors[-1] == line and proc.stderr.rstrip().endswith(line), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr
