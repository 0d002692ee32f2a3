"""The Optuna searcher, aware that a trial is a whole task sequence, and the base config as a candidate.

Ray's ``OptunaSearch`` tells Optuna a trial's *last* result, also when a scheduler (ASHA)
stopped it after its first tasks. In continual learning the metrics over the first tasks
are not comparable with those over the whole sequence (accuracy is usually higher, there is
less to forget), so such a trial would look better than it is. Here a trial that did not
complete its sequence is told as PRUNED: single-objective TPE still learns from its
per-task intermediate values, and no partial metric is ever taken for a final one.

A sweep must never lose to not sweeping: the spec's base config (the preset plus ``set``)
is the search phase's first trial. ``base_point`` gives its values for the searched keys;
keys whose base value lies outside the space are left to the sampler (that first trial is
then the base only in the other keys; the confirm phase runs the exact base config anyway).

The study itself lives in memory and travels in Tune's snapshots (see ``sweeps.driver._searcher``);
``StudyMirror`` appends every trial that ends (finished, pruned, failed) to ``SWEEP/optuna.db``
as it ends, from a background thread, so the file can be watched live (``optuna-dashboard``) and
a driver killed mid-search leaves every ended trial in it. Each mirrored trial carries its Tune
trial id (user attribute ``tune_trial_id``, also the name of its trial directory): a trial is
written once, however often a restored search tells it again.
"""

from __future__ import annotations

import copy
import os
import queue
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

__all__ = ["SequenceOptunaSearch", "StudyMirror", "mirror_for", "base_point", "in_space", "TUNE_TRIAL_ID"]

#: the user attribute naming a mirrored trial's Tune trial id (and trial directory)
TUNE_TRIAL_ID = "tune_trial_id"


def in_space(value: Any, kind: str, args: tuple[Any, ...]) -> bool:
    """Whether ``value`` can be drawn from the distribution ``{kind: args}`` of a spec's space."""
    if isinstance(value, bool) or value is None:
        return kind == "choice" and any(type(a) is type(value) and a == value for a in args)
    if kind == "choice":
        return any(not isinstance(a, bool) and type(a) in (type(value), int, float) and a == value for a in args)
    if not isinstance(value, (int, float)):
        return False
    if kind == "int" and not float(value).is_integer():
        return False
    return args[0] <= value <= args[1]


def base_point(spec) -> dict[str, Any]:
    """The base config of ``spec`` as seen by the search: ``{"config_id", "values", "point", "outside"}``.

    ``values``: the base's value of every searched key; ``point``: those that lie in the
    space (what the first trial takes); ``outside``: the keys whose base value does not.
    """
    from pah.config import config_id, flatten

    cfg = spec.trial_config()
    flat = flatten(cfg.to_dict())
    values = {k: flat.get(k) for k in spec.space}
    point = {k: v for k, v in values.items() if in_space(v, spec.space[k].kind, spec.space[k].args)}
    return {"config_id": config_id(cfg), "values": values, "point": point,
            "outside": [k for k in spec.space if k not in point]}


class StudyMirror:
    """Ended trials of an in-memory study, appended to an SQLite study (``path``) in a background thread.

    ``put`` queues a copy of a trial and returns at once; ``flush`` waits until the queue is
    written; ``sync`` writes every ended trial of a study that the file lacks, in the caller's
    thread. A write that fails (disk full, a locked file) is a note on stderr, never a failed
    sweep: the study in Tune's snapshot is the one the search uses.
    """

    def __init__(self, path: str | Path, study_name: str, directions: list[str], metric_names: list[str] | None = None):
        self.path, self.study_name = Path(path), study_name
        self.directions, self.metric_names = list(directions), metric_names
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._study = None
        self._known: set[str] = set()
        self._warned = False

    def put(self, key: str, trial: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pah-optuna-mirror", daemon=True)
            self._thread.start()
        self._queue.put((key, copy.deepcopy(trial)))

    def flush(self, timeout: float = 60.0) -> None:
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def sync(self, study: Any, keys: dict[int, str]) -> int:
        """Write every ended trial of ``study`` (``keys``: trial number -> Tune trial id) the file lacks."""
        items = [(keys[t.number], t) for t in study.get_trials(deepcopy=False) if t.number in keys]
        return self._write(items)

    def _run(self) -> None:
        while True:
            items, events = [], []
            item = self._queue.get()
            while True:  # all that is queued, in one go
                (events if isinstance(item, threading.Event) else items).append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if items:
                self._write(items)
            for e in events:
                e.set()

    def _write(self, items: list[tuple[str, Any]]) -> int:
        import optuna

        with self._lock:
            try:
                if self._study is None:
                    storage = optuna.storages.RDBStorage(
                        f"sqlite:///{self.path}", engine_kwargs={"connect_args": {"timeout": 60}})
                    self._study = optuna.create_study(storage=storage, study_name=self.study_name,
                                                      directions=self.directions, load_if_exists=True)
                    if self.metric_names and not self._study.metric_names:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                            self._study.set_metric_names(self.metric_names)
                    self._known = {str(t.user_attrs.get(TUNE_TRIAL_ID)) for t in self._study.get_trials(deepcopy=False)}
                new = {key: _copy_trial(t, key) for key, t in items if key not in self._known and t.state.is_finished()}
                if new:
                    self._study.add_trials(list(new.values()))
                    self._known.update(new)
                return len(new)
            except Exception as e:  # the live copy is for people; the search does not depend on it
                if not self._warned:
                    self._warned = True
                    print(f"note: could not update {self.path} ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
                self._study = None
                return 0


def _copy_trial(t: Any, key: str) -> Any:
    from optuna.trial import FrozenTrial

    return FrozenTrial(
        number=t.number, state=t.state, value=None, values=t.values, datetime_start=t.datetime_start,
        datetime_complete=t.datetime_complete, params=t.params, distributions=t.distributions,
        user_attrs={**t.user_attrs, TUNE_TRIAL_ID: key}, system_attrs=t.system_attrs,
        intermediate_values=t.intermediate_values, trial_id=t._trial_id,
    )


_MIRRORS: dict[tuple[str, str], StudyMirror] = {}
#: one lock per file: a study's mirrors (one per method) write to one SQLite file
_FILE_LOCKS: dict[str, threading.Lock] = {}
#: set by the driver to this sweep's SWEEP/optuna.db (see SequenceOptunaSearch.study_mirror)
MIRROR_ENV = "PAH_OPTUNA_DB"


def mirror_for(path: str | Path, study_name: str, directions: list[str], metric_names: list[str] | None = None) -> StudyMirror:
    """This process's mirror of study ``study_name`` in ``path`` (one writer per study and file, however often
    the searcher is restored; the studies of one file take turns)."""
    key = str(Path(path).absolute())
    if (key, study_name) not in _MIRRORS:
        mirror = StudyMirror(path, study_name, directions, metric_names)
        mirror._lock = _FILE_LOCKS.setdefault(key, threading.Lock())
        _MIRRORS[key, study_name] = mirror
    return _MIRRORS[key, study_name]


def tune_ids(searcher: OptunaSearch) -> dict[int, str]:
    """Optuna trial number -> Tune trial id, for the trials ``searcher`` has asked for."""
    return {t.number: tid for tid, t in getattr(searcher, "_ot_trials", {}).items()}


class SequenceOptunaSearch(OptunaSearch):
    """OptunaSearch that tells partial sequences as PRUNED, asks for ``base_point`` first and mirrors
    every ended trial into ``mirror`` (an SQLite file, see :class:`StudyMirror`)."""

    base_point: dict[str, Any] | None = None  # for searchers pickled by an older version
    mirror: str | None = None

    def __init__(self, *args: Any, base_point: dict[str, Any] | None = None, mirror: str | Path | None = None,
                 **kwargs: Any) -> None:
        self.base_point = dict(base_point) if base_point else None
        self.mirror = str(mirror) if mirror else None
        super().__init__(*args, **kwargs)

    def study_mirror(self) -> StudyMirror | None:
        if not self.mirror or getattr(self, "_ot_study", None) is None:
            return None
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        directions = [d.name.lower() for d in self._ot_study.directions]
        # the driver names this run's file: a restored searcher holds the path of the process that
        # pickled it, which on another machine (or another staging copy of a bucket) is not ours
        path = os.environ.get(MIRROR_ENV) or self.mirror
        return mirror_for(path, self._ot_study.study_name, directions, [str(m) for m in metrics])

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        # Ray's points_to_evaluate wants every key; Optuna takes a partial point and samples the rest.
        # On a restore the study is replaced by the saved one right after this, so nothing is asked twice.
        if self.base_point and not self._ot_study.trials:
            self._ot_study.enqueue_trial(self.base_point, user_attrs={"pah_base_config": True})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        partial = result and result.get("tasks_completed") != result.get("num_tasks")
        told = trial_id in self._completed_trials
        if error or not partial or told:
            super().on_trial_complete(trial_id, result, error)
        else:
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
        mirror = self.study_mirror()
        if mirror is not None and not told and trial_id in self._ot_trials:
            ot = self._ot_trials[trial_id]
            mirror.put(trial_id, self._ot_study._storage.get_trial(ot._trial_id))
