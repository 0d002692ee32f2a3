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
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from ray.tune import Callback

from pah.retry import Outage, retrying, transient

__all__ = ["SnapshotGuard", "repair", "fill_missing_checkpoints", "pace_tune_snapshots", "fresh_failures",
           "fresh_failures_at", "new_trials_where_restored", "restored_trials_keep_their_json", "saves_wait_for_room",
           "SyncFailures", "BACKUP"]

BACKUP = ".pah-snapshot"
STATE_PREFIXES = ("experiment_state-", "search_gen_state-", "searcher-state-", "basic-variant-state-")


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
    """The snapshot files in ``exp_dir``: one listing of it (it also holds every trial's dir, a thousand
    at scale, and the guard looks twice a second: four globs of it cost 40 ms each time)."""
    try:
        with os.scandir(exp_dir) as it:
            names = [e.name for e in it]
    except FileNotFoundError:
        return []
    return [exp_dir / n for n in names if n.startswith(STATE_PREFIXES) and n.endswith((".json", ".pkl"))]


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
        tmp = dst / f".{p.name}.tmp"
        try:
            dst.mkdir(exist_ok=True)
            shutil.copy2(p, tmp)
        except OSError as e:
            if transient(e) != "full":
                raise
            tmp.unlink(missing_ok=True)  # a full disk: the last good copy stays, the next step tries again
            continue
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


def new_trials_where_restored() -> bool:
    """Make a restored experiment's *new* trials live where it was restored from, as its old ones do.

    Ray 2.60's ``TuneController.resume`` points every restored trial at the experiment's current
    storage path, but the search algorithm's saved state keeps the experiment spec it was first
    given, storage context (absolute path) included, and every trial it creates after the restore
    takes that: a sweep moved with ``mv`` failed its new trials ("Unable to set up cluster storage
    ... storage_fs_path=<old path>"), and a copy would write them into the original. Patched in
    this driver process; returns False (and changes nothing) on a Ray without this hook.
    """
    def wrap(original):
        def resume(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            _repoint(getattr(self, "_search_alg", None), self._storage)
            return out
        return resume

    return _patch_controller("resume", wrap)


def restored_trials_keep_their_json() -> bool:
    """Let a restored trial keep the JSON of its run metadata that it was restored from, so that the first
    snapshot after a restore does not encode every trial's metadata again.

    Ray 2.60 caches each trial's metadata JSON (``_TrainingRunMetadata.get_json_state``) and clears the
    cache on every change, but ``Tuner.restore`` rebuilds the metadata without it: the first snapshot of
    a restored sweep re-encodes all of them with Python's pure-Python indenting encoder, 6 s for the
    1,000-trial sweep of ``bench/scale.py`` before any trial could start. The string restored from is
    what that encoding gives, except where ``Trial.set_storage`` rewrites the checkpoint paths inside
    the metadata without clearing the cache (a moved or copied sweep): there the cache is cleared, and
    the next snapshot encodes the new paths as Ray would. Patched in this driver process; returns False
    (and changes nothing) on a Ray without these hooks.
    """
    try:
        from ray.tune.experiment.trial import Trial
        from ray.tune.trainable.metadata import _TrainingRunMetadata
    except ImportError:
        return False
    if not (hasattr(Trial, "restore_run_metadata") and hasattr(Trial, "set_storage")
            and hasattr(_TrainingRunMetadata, "invalidate_cache") and hasattr(_TrainingRunMetadata(), "_cached_json")):
        return False
    restore = getattr(Trial, "_pah_restore_run_metadata", Trial.restore_run_metadata)
    set_storage = getattr(Trial, "_pah_set_storage", Trial.set_storage)
    Trial._pah_restore_run_metadata, Trial._pah_set_storage = restore, set_storage

    def restore_run_metadata(self, run_metadata: str) -> None:
        restore(self, run_metadata)
        if self.run_metadata._cached_json is None:
            self.run_metadata._cached_json = run_metadata  # not a change: no invalidation

    def moved_storage(self, new_storage) -> None:
        old = self.storage
        set_storage(self, new_storage)
        if (old is None or old.trial_fs_path != new_storage.trial_fs_path
                or type(old.storage_filesystem) is not type(new_storage.storage_filesystem)):
            self.run_metadata.invalidate_cache()  # its checkpoints' paths were rewritten

    Trial.restore_run_metadata, Trial.set_storage = restore_run_metadata, moved_storage
    return True


def _patch_controller(name: str, wrap) -> bool:
    """Replace Ray Tune's ``TuneController.NAME`` with ``wrap(original)`` in this driver process, once however
    often it is called (the original is kept as ``_pah_NAME``); False, and nothing changed, on a Ray without it."""
    try:
        from ray.tune.execution.tune_controller import TuneController as C
    except ImportError:
        return False
    if not hasattr(C, name):
        return False
    original = getattr(C, f"_pah_{name}", getattr(C, name))
    setattr(C, f"_pah_{name}", original)
    setattr(C, name, wrap(original))
    return True


def saves_wait_for_room() -> bool:
    """Make Tune's saves of its experiment state wait out a full disk (or a storage outage) in this driver
    process, as the trials' own writes do (``pah.retry.retrying``: backoff, a line while it lasts, up to
    ``PAH_STORAGE_RETRY_S``), instead of ending ``Tuner.fit()`` with ENOSPC.

    Ray 2.60's ``TuneController.save_to_dir`` writes ``experiment_state-*.json`` and the searcher's state
    in the experiment's staging dir (the sweep dir itself for a local sweep), unguarded; a write cut
    short by a full disk leaves a half file, which the next attempt writes again whole (and
    ``SnapshotGuard`` keeps the last good copy meanwhile). Returns False (and changes nothing) on a Ray
    without this hook.
    """
    def wrap(original):
        def save_to_dir(self, *args, **kwargs):
            where = getattr(self._storage, "experiment_driver_staging_path", "") or "the sweep dir"
            return retrying(lambda: original(self, *args, **kwargs), f"disk of {where}",
                            what="saving Ray Tune's experiment state")
        return save_to_dir

    return _patch_controller("save_to_dir", wrap)


class SyncFailures(logging.Filter):
    """Ray Tune's failed copies of its experiment state to the sweep's storage, said as storage faults are.

    Ray 2.60 copies the state from a staging dir to the storage path in the background every few
    seconds, and logs each failed copy with its whole traceback (``Last sync command failed ...``), a
    20-line dump every 2 s while a disk is full or a bucket is down. The next copy retries it anyway.
    Installed (``with SyncFailures(name):``) on Ray's two loggers, this drops those records whose
    error passes by waiting (``pah.retry.transient``) and says them as a ``pah.retry.Outage`` does:
    one line every ``PAH_STORAGE_REPORT_S``. Other records pass as they are.
    """

    LOGGERS = ("ray.train._internal.syncer", "ray.tune.execution.experiment_state")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.outage = Outage(name, what="saving Ray Tune's experiment state")

    def filter(self, record: logging.LogRecord) -> bool:
        e = record.exc_info[1] if record.exc_info else sys.exc_info()[1]  # Ray logs inside its except clause
        if e is None or transient(e) is None:
            return True
        self.outage.failed(e)
        return False

    def __enter__(self) -> SyncFailures:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _repoint(search_alg, storage) -> None:
    """Point the storage contexts in ``search_alg``'s experiment specs at ``storage``'s path, as Ray does
    for restored trials (a SearchGenerator keeps one experiment, a BasicVariantGenerator one per iterator)."""
    import copy

    specs = []
    exp = getattr(search_alg, "_experiment", None)
    if exp is not None:
        specs.append(exp.spec)
    specs += [it.unresolved_spec for it in getattr(search_alg, "_iterators", None) or []
              if isinstance(getattr(it, "unresolved_spec", None), dict)]

    def moved(old):
        new = copy.copy(old)
        new.storage_filesystem = storage.storage_filesystem
        new.storage_fs_path = storage.storage_fs_path
        new.experiment_dir_name = storage.experiment_dir_name
        return new

    for spec in specs:
        if spec.get("storage") is not None:
            spec["storage"] = moved(spec["storage"])
    if exp is not None and getattr(exp, "storage", None) is not None:
        exp.storage = exp.spec.get("storage") or moved(exp.storage)


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
    with os.scandir(exp_dir) as it:  # one listing per trial dir (a glob per trial took 0.8 s at 1,000 trials)
        trials = [Path(e.path) for e in it if e.is_dir()]
    for trial in trials:
        idx = [int(name[11:]) for name in os.listdir(trial) if name.startswith("checkpoint_") and name[11:].isdigit()]
        for i in range(max(idx, default=-1)):
            c = trial / f"checkpoint_{i:06d}"
            if not c.exists():
                c.mkdir()
                (c / "meta.json").write_text('{"tasks_completed": 0}\n')
                n += 1
    return n


def fresh_failures_at(exp: str | Path, trial_ids: set[str]) -> int:
    """``fresh_failures`` for an experiment on a filesystem or in a bucket (a URI): there, the newest
    ``experiment_state-*.json`` is fetched, reset and put back in place (the one a restore reads)."""
    import tempfile

    from pah import storage

    if not storage.is_uri(exp):
        return fresh_failures(Path(exp), trial_ids)
    with tempfile.TemporaryDirectory(prefix="pah-failures-") as tmp:
        local = Path(tmp)
        storage.download(str(exp), local, keep=lambda rel: "/" not in rel and rel.startswith("experiment_state-"))
        reset = fresh_failures(local, trial_ids)
        states = sorted(local.glob("experiment_state-*.json"))
        if reset and states:
            storage.upload(states[-1], storage.join(str(exp), states[-1].name))
        return reset


def fresh_failures(exp_dir: Path, trial_ids: set[str]) -> int:
    """Set the failure count of these trials to 0 in the experiment's newest snapshot (and its good copy),
    so that a restore retries them with a fresh ``max_failures`` (Ray keeps the count across restores).
    Returns how many trials it reset; a snapshot it cannot read is left as it is."""
    from pah.io import atomic_write_bytes

    reset = 0
    for d in (exp_dir, exp_dir / BACKUP):
        states = sorted(d.glob("experiment_state-*.json"))
        if not states or not _valid(states[-1], full=True):
            continue
        state = json.loads(states[-1].read_text())
        changed = 0
        for entry in state.get("trial_data") or []:
            try:
                trial, meta = json.loads(entry[0]), json.loads(entry[1])
            except (TypeError, ValueError, IndexError):
                continue
            if trial.get("trial_id") in trial_ids and meta.get("num_failures"):
                meta["num_failures"] = 0
                entry[1] = json.dumps(meta)
                changed += 1
        if changed:
            atomic_write_bytes(states[-1], json.dumps(state).encode())
        reset = max(reset, changed)
    return reset
