"""Keep a good copy of Tune's experiment snapshot, because Ray writes it in place.

Ray 2.60 copies the driver's experiment state (trials, search generator, searcher) into
the storage path with ``pyarrow.fs.copy_files``, which truncates and rewrites each file.
A driver killed during that copy (SIGKILL, a node lost, a SLURM job ending) leaves empty
files and ``Tuner.restore`` would start the phase over. ``SnapshotGuard`` copies each
complete snapshot to ``.pah-snapshot/`` atomically; ``repair`` puts it back before a
restore when the one in place is broken.

An older snapshot may name a Ray checkpoint that ``CheckpointConfig(num_to_keep=1)`` has
deleted since, and Tune would fail that trial for good. The trial's own directory holds
its real state, so ``fill_missing_checkpoints`` puts an empty placeholder (0 tasks) there;
the trainable then resumes from its trial directory (see ``sweeps.trainable``).

Cost at scale (bench/scale.py): Tune's snapshot is one JSON of every trial (~17 kB each) plus
the pickled searcher, so it grows with the sweep. ``pace_tune_snapshots`` keeps it at most
~5% of the driver's time (every 2 s while that is cheap, less often as it grows) and stops
Ray forcing one after every trial checkpoint (with ``num_to_keep=1`` that is one snapshot per
task reported). ``backup`` copies a file only when it changed, and checks completeness from
the file's tail instead of parsing it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ray.tune import Callback

__all__ = ["SnapshotGuard", "repair", "fill_missing_checkpoints", "pace_tune_snapshots", "BACKUP"]

BACKUP = ".pah-snapshot"
STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "basic-variant-state-*.json")


def _valid(p: Path, *, full: bool = False) -> bool:
    """Whether ``p`` is a complete snapshot file: from its last bytes (or by parsing it, ``full``).

    Tune writes ``experiment_state`` as ``{"trial_data": ..., "runner_data": ..., "stats":
    {"start_time": T}}``, so only a complete file ends that way; the others are pickles
    (despite some names), which end with the STOP opcode.
    """
    try:
        size = p.stat().st_size
        if size == 0:
            return False
        json_state = p.name.startswith("experiment_state-") or p.name.startswith(".experiment_state-")
        if full and json_state:
            json.loads(p.read_text())
            return True
        with open(p, "rb") as f:
            f.seek(max(0, size - 64))
            tail = f.read()
        if json_state:
            return b'"stats": {"start_time": ' in tail and tail.rstrip().endswith(b"}}")
        return tail.endswith(b".")
    except (OSError, ValueError):
        return False


def _state_files(exp_dir: Path) -> list[Path]:
    return [p for g in STATE_GLOBS for p in exp_dir.glob(g)]


def backup(exp_dir: Path) -> None:
    """Copy every complete snapshot file that changed to the backup dir (a half-written one keeps its last copy)."""
    dst = exp_dir / BACKUP
    for p in _state_files(exp_dir):
        target = dst / p.name
        try:
            st, bt = p.stat(), target.stat()
            if bt.st_size == st.st_size and bt.st_mtime_ns == st.st_mtime_ns:
                continue  # unchanged since the last copy: a stat, no read
        except FileNotFoundError:
            pass
        if not _valid(p):
            continue
        dst.mkdir(exist_ok=True)
        tmp = dst / f".{p.name}.tmp"
        shutil.copy2(p, tmp)
        if _valid(tmp):
            os.replace(tmp, target)


def repair(exp_dir: Path) -> list[str]:
    """Replace broken (empty, half-written) snapshot files with their last good copies."""
    src = exp_dir / BACKUP
    fixed = []
    if not src.is_dir():
        return fixed
    for b in sorted(src.iterdir()):
        if b.name.startswith(".") or not _valid(b, full=True):
            continue
        p = exp_dir / b.name
        if not p.exists() or not _valid(p, full=True):
            tmp = exp_dir / f".{b.name}.tmp"
            shutil.copy2(b, tmp)
            os.replace(tmp, p)
            fixed.append(b.name)
    return fixed


def pace_tune_snapshots(min_period_s: float = 2.0, max_share: float = 0.05, *, force_on_checkpoint: bool = False) -> bool:
    """Pace Tune's experiment snapshots in this driver process: every ``min_period_s`` while they are
    cheap, else so that they take at most ``max_share`` of the time; never forced by trial checkpoints.

    Ray 2.60's ``_ExperimentCheckpointManager`` forces a snapshot whenever a trial has saved
    ``num_to_keep`` checkpoints since the last one: with ``num_to_keep=1``, after every task a
    trial reports, each a JSON dump of all trials (O(trials), so O(trials^2) over a sweep). That
    forcing keeps the snapshot's view of the newest Ray checkpoint exact; this sweep does not need
    it (a trial resumes from its own directory, see ``fill_missing_checkpoints``). Ray's own
    adaptive mode ("auto") would wait at least 10 s, and a driver killed in that window forgets
    the trials started since. ``force_on_checkpoint`` keeps Ray's forcing (object storage, where a
    trial's own directory is node-local scratch). Returns False (and changes nothing) on a Ray
    without these hooks.
    """
    try:
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as M
    except ImportError:
        return False
    if not all(hasattr(M, a) for a in ("on_trial_checkpoint", "_update_auto_checkpoint_time")):
        return False

    original = getattr(M, "_pah_on_trial_checkpoint", M.on_trial_checkpoint)
    M._pah_on_trial_checkpoint = original

    def on_trial_checkpoint(self, trial) -> None:
        if force_on_checkpoint:  # trials resume from Tune's checkpoints only (object storage)
            return original(self, trial)
        return None

    def _update_auto_checkpoint_time(self, time_taken: float) -> None:
        self._checkpoint_period = max(min_period_s, time_taken / max_share)

    M.on_trial_checkpoint = on_trial_checkpoint
    M._update_auto_checkpoint_time = _update_auto_checkpoint_time
    return True


class SnapshotGuard(Callback):
    def __init__(self, exp_dir: str, every_s: float = 0.5):
        self.exp_dir = exp_dir
        self.every_s = every_s
        self._last = 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            backup(Path(self.exp_dir))

    def on_experiment_end(self, trials: list, **info) -> None:
        backup(Path(self.exp_dir))


def fill_missing_checkpoints(exp_dir: Path) -> int:
    """Recreate deleted ``checkpoint_NNNNNN`` dirs below each trial's newest as 0-task placeholders."""
    n = 0
    for trial in exp_dir.glob("*/"):
        idx = [int(c.name.split("_")[1]) for c in trial.glob("checkpoint_[0-9]*") if c.name.split("_")[1].isdigit()]
        for i in range(max(idx, default=-1)):
            c = trial / f"checkpoint_{i:06d}"
            if not c.exists():
                c.mkdir()
                (c / "meta.json").write_text('{"tasks_completed": 0}\n')
                n += 1
    return n
