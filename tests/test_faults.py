"""Faults with nothing lost, with real `pah train` processes: a full disk, a corrupt checkpoint, SIGTERM.

Each checks what a user keeps: the last good checkpoint (loadable, its tasks never trained
again), one `error:` or `warning:` line saying what happened, the exit code, and that
running the same command again finishes the trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_pah

pytestmark = pytest.mark.slow

TRAIN = ["train", "split-digits-pah", "--set", "train.epochs_per_task=1", "--device", "cpu", "--no-progress"]


# a full disk fails these at once (PAH_STORAGE_RETRY_S=0): the checks below are of the failure itself;
# waiting a full disk out is tests/test_storage_faults.py's
_NO_RETRY = {"PAH_STORAGE_RETRY_S": "0"}


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **_NO_RETRY}
    return subprocess.Popen([sys.executable, "-m", "pah", *TRAIN, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train(out: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_pah(*TRAIN, "--out", str(out), env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **_NO_RETRY},
                   timeout=timeout)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``path`` exists (the first task's checkpoint), while the trial runs."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"pah train ended first:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.01)


def _tasks_in(ckpt: Path) -> list[list[float]]:
    return torch.load(ckpt, weights_only=False)["acc_rows"]


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def _no_temp_files(d: Path) -> None:
    assert not [p for p in d.rglob("*.tmp")], list(d.rglob("*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One whole trial, uninterrupted: the reference the interrupted ones must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "trial"
    r = _train(out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs (we are root in CI); fill(free_bytes) leaves that much room on it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    filler = mnt / "filler"

    def fill(free_bytes: int) -> None:
        st = os.statvfs(mnt)
        size = st.f_bavail * st.f_frsize - free_bytes
        with open(filler, "ab") as f:
            os.posix_fallocate(f.fileno(), 0, filler.stat().st_size + size)

    fill.filler = filler
    try:
        yield mnt, fill
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_the_last_checkpoint_and_the_trial_resumes(finished, small_disk):
    mnt, fill = small_disk
    out = mnt / "trial"
    ckpt = out / "checkpoint" / "state.pt"
    proc = _start(out)
    _wait_for(ckpt, proc)
    fill(64 * 1024)  # room for small files, not for the next checkpoint
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = _error_lines(err)
    assert "No space left on device" in line and str(ckpt) in line and "previous state.pt is intact" in line, line
    kept = _tasks_in(ckpt)  # the last good checkpoint: loadable, whole
    assert 1 <= len(kept) < 5 and not (out / "result.json").exists()
    _no_temp_files(out)

    # room again: the same command resumes after the kept tasks and ends as the uninterrupted trial
    fill.filler.unlink()
    r = _train(out)
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert [row[: len(k)] for row, k in zip(result["acc_matrix"][: len(kept)], kept, strict=True)] == kept
    assert result["acc_matrix"] == json.loads((finished / "result.json").read_text())["acc_matrix"]

    # the disk full again, now while the result is written: no partial result.json, and again it resumes
    (out / "result.json").unlink()
    fill(0)  # not one block left
    r = _train(out)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = _error_lines(r.stderr)
    assert "No space left on device" in line and "result.json" in line and "no result.json was written" in line
    assert not (out / "result.json").exists() and len(_tasks_in(ckpt)) == 5
    _no_temp_files(out)
    fill.filler.unlink()
    r = _train(out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "result.json").read_text())["acc_matrix"] == result["acc_matrix"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_checkpoint_is_reported_and_the_trial_starts_again(finished, tmp_path, damage):
    out = tmp_path / "trial"
    shutil.copytree(finished, out)
    (out / "result.json").unlink()
    ckpt = out / "checkpoint" / "state.pt"
    data = ckpt.read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncated" else os.urandom(4096)
    ckpt.write_bytes(damaged)
    r = _train(out)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and str(ckpt) in warnings[0] and "unreadable" in warnings[0], r.stderr
    assert "starts again from task 1" in warnings[0] and "Traceback" not in r.stderr
    assert (out / "checkpoint" / "state.pt.corrupt").read_bytes() == damaged  # kept for a look, never loaded
    # retrained from task 1, deterministically: the same matrices as the trial that was never damaged
    expected = json.loads((finished / "result.json").read_text())
    assert json.loads((out / "result.json").read_text())["acc_matrix"] == expected["acc_matrix"]
    assert len(_tasks_in(ckpt)) == 5


def test_sigterm_stops_train_with_143_and_the_checkpoint_intact(finished, tmp_path):
    out = tmp_path / "trial"
    ckpt = out / "checkpoint" / "state.pt"
    proc = _start(out)
    _wait_for(ckpt, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = _error_lines(err)
    assert "stopped by SIGTERM" in line and str(ckpt) in line and "resume" in line, line
    kept = _tasks_in(ckpt)
    assert 1 <= len(kept) <= 5
    _no_temp_files(out)
    r = _train(out)
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert [row[: len(k)] for row, k in zip(result["acc_matrix"][: len(kept)], kept, strict=True)] == kept
    assert result["acc_matrix"] == json.loads((finished / "result.json").read_text())["acc_matrix"]


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    """result.json, checkpoints and report.html go through a temp file: not 0600 (mkstemp's
    default), but 0666 less the umask, so group members of a shared project dir can read them."""
    from pah.io import _umask, atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"a": 1})
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~_umask()
