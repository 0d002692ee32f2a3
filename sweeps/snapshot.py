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
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ray.tune import Callback

__all__ = ["SnapshotGuard", "repair", "fill_missing_checkpoints", "BACKUP"]

BACKUP = ".pah-snapshot"
STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "basic-variant-state-*.json")


def _valid(p: Path) -> bool:
    try:
        if p.stat().st_size == 0:
            return False
        if p.name.startswith("experiment_state-"):  # the others are pickles, despite some names
            json.loads(p.read_text())
        return True
    except (OSError, ValueError):
        return False


def _state_files(exp_dir: Path) -> list[Path]:
    return [p for g in STATE_GLOBS for p in exp_dir.glob(g)]


def backup(exp_dir: Path) -> None:
    """Copy every complete snapshot file to the backup dir (a half-written one keeps its last copy)."""
    files = [p for p in _state_files(exp_dir) if _valid(p)]
    if not files:
        return
    dst = exp_dir / BACKUP
    dst.mkdir(exist_ok=True)
    for p in files:
        target = dst / p.name
        st = p.stat()
        if target.exists() and target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns:
            continue
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
        if b.name.startswith(".") or not _valid(b):
            continue
        p = exp_dir / b.name
        if not p.exists() or not _valid(p):
            tmp = exp_dir / f".{b.name}.tmp"
            shutil.copy2(b, tmp)
            os.replace(tmp, p)
            fixed.append(b.name)
    return fixed


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
