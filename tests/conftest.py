from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_pah(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``pah`` command line in a subprocess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pah", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


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


_ci_failed_skips: Counter[str] = Counter()


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
    _ci_failed_skips[_skip_reason(rep)] += 1
    rep.outcome = "failed"
    rep.longrepr = (f"CI is set, and this test was skipped: {_skip_reason(rep)}. A service or package that CI "
                    "provides is missing (for SLURM: PAH_CI_SLURM=0 runs CI without it on purpose).")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line: how many tests were skipped, and why (and whether CI mode counted them as failures)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    reasons = Counter(_skip_reason(r) for r in skipped)
    line = f"skip summary: {len(skipped)} test(s) skipped"
    if reasons:
        line += ": " + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
    if ci_mode():
        n = sum(_ci_failed_skips.values())
        line += f" (CI mode: {n} skip(s) counted as failures" + (": " if n else "") + "; ".join(
            f"{k} x {reason}" for reason, k in _ci_failed_skips.most_common()) + ")"
    terminalreporter.write_line(line)
