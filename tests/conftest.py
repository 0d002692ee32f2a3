from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Two test workers share the machine's cores (pyproject: -n 2), and most tests start more
# processes (pah train, Ray's trial workers, SLURM jobs): one compute thread per process. With
# PyTorch's default of one per core, two trainings on 2 cores ran at the same speed as with one
# thread each but burnt 1.6x the CPU in OpenMP's spin-waits, which the other tests then lacked.
# Set before torch is imported (here, in the workers and in every subprocess they start).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def run_pah(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``pah`` command line in a subprocess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pah", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def check_wandb_runs(sweep: Path, phase: str) -> int:
    """Every trial of ``phase`` has one complete offline W&B run: config, one history row per
    task it trained, summary, exit record. Read back with W&B's own record format. Returns how
    many runs were checked."""
    from sweeps.wandb_runs import config_of, history_rows, is_finished, summary_of

    # a trial dir with neither is an orphan of a killed driver (see the killed-driver test)
    trials = sorted(d for d in (sweep / "trials" / phase).iterdir()
                    if (d / "result.json").exists() or (d / "stopped.json").exists())
    for d in trials:
        tid = d.name
        files = list((sweep / "wandb").glob(f"offline-run-*-{tid}/run-{tid}.wandb"))
        assert len(files) == 1, (tid, files)  # replaced earlier runs of a restored trial are renamed
        f = files[0]
        assert is_finished(f), f"{f} has no exit record ({f.stat().st_size} bytes)"
        params = json.loads((d / "params.json").read_text())
        config = config_of(f)
        assert {k: config.get(k) for k in params["params"]} == params["params"] and config["seed"] == params["seed"]
        if (d / "result.json").exists():
            result = json.loads((d / "result.json").read_text())
            tasks = len(result["acc_matrix"])
            assert config["config_id"] == result["config_id"]
            assert config["method"] == result["method"], (f, config.get("method"))  # W&B: group by method
            summary = summary_of(f)
            for m in ("avg_acc", "forgetting", "bwt"):
                assert summary[m] == pytest.approx(result["metrics"][m]), (f, m)
        else:  # stopped by ASHA: the tasks it trained
            tasks = json.loads((d / "stopped.json").read_text())["tasks_completed"]
        assert [r["tasks_completed"] for r in history_rows(f)] == list(range(1, tasks + 1)), f
    return len(trials)


def fashion_mnist_available() -> bool:
    """Real Fashion-MNIST can be loaded (Debian's dataset-fashion-mnist, which ./setup.sh installs)."""
    from pah.config import load_config
    from pah.data import BENCHMARKS
    from pah.errors import UserError

    try:
        BENCHMARKS.get("split-fashion-mnist")().load(load_config("split-fashion-mnist-finetune").data, 0)
    except UserError:
        return False
    return True


@pytest.fixture
def pah_cli():
    return run_pah


# --------------------------------------------------------------------------- CI mode
# With CI set (.ci/run sets it), a skipped test is a failure: CI installs every package the
# suite needs and starts a local SLURM, so a skip there means a service or a dependency is
# down and the run must not pass. Exceptions: tests marked `ci_may_skip`, and the SLURM
# tests when PAH_CI_SLURM=0 says CI runs without SLURM on purpose.


def ci_mode() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ci_may_skip: a skip of this test is fine in CI mode (CI set)")


_CI_SKIP = "CI is set, and this test was skipped: "


def _skip_reason(rep: pytest.TestReport) -> str:
    if isinstance(rep.longrepr, tuple):
        return rep.longrepr[2].removeprefix("Skipped: ")
    return str(rep.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and ci_mode()) or hasattr(rep, "wasxfail") or item.get_closest_marker("ci_may_skip"):
        return
    if item.get_closest_marker("slurm") and os.environ.get("PAH_CI_SLURM", "1") == "0":
        return
    rep.outcome = "failed"
    rep.longrepr = (f"{_CI_SKIP}{_skip_reason(rep)}. A service or package that CI "
                    "provides is missing (for SLURM: PAH_CI_SLURM=0 runs CI without it on purpose).")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line: how many tests were skipped, and why (and whether CI mode counted them as failures)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    reasons = Counter(_skip_reason(r) for r in skipped)
    line = f"skip summary: {len(skipped)} test(s) skipped"
    if reasons:
        line += ": " + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
    if ci_mode():  # counted from the reports, which reach this process from xdist's workers too
        failed = Counter()
        for r in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", []):
            text = str(r.longrepr)
            if text.startswith(_CI_SKIP):
                failed[text.removeprefix(_CI_SKIP).split(". A service")[0]] += 1
        n = sum(failed.values())
        line += f" (CI mode: {n} skip(s) counted as failures" + (": " if n else "") + "; ".join(
            f"{k} x {reason}" for reason, k in failed.most_common()) + ")"
    terminalreporter.write_line(line)


# --------------------------------------------------------------------------- order
# Two workers take whole files (pyproject: -n 2 --dist loadfile --no-loadscope-reorder), in
# collection order as each frees up. The files that take minutes go first, longest first, so
# that the tail of the run is short tests on both workers; xdist's own order (most tests
# first) left a file with one 100-s test to the end, run alone while the other worker idled.
_LONG_FILES = ("test_cloud_nodes.py", "test_validity.py", "test_interrupts.py", "test_autoscale.py", "test_sweep_e2e.py", "test_launch_slurm.py", "test_storage_s3.py", "test_launch_ray.py",
               "test_train.py", "test_faults.py", "test_sweep_pack.py", "test_study.py",
               "test_relocate.py", "test_storage_faults.py", "test_owner.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
