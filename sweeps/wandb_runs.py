"""Complete W&B runs for a sweep's trials: every trial's run holds its config, its per-task
history and its summary when ``pah sweep`` returns, after a resume as after a clean run.

One logging process per sweep phase hosts every trial's run (``SharedWandbActor``, a Ray actor
with no CPU on the driver's node, restarted by Ray if it dies): W&B can hold many runs open in
one process (``wandb.init(reinit="create_new")``, each run logged and finished through its own
``Run``), behind one W&B service process (wandb-core). Ray's ``WandbLoggerCallback`` starts a
logging actor and a ``Queue`` actor per trial, and each actor's ``wandb.init`` a W&B service:
processes that start and import wandb on the cores the trials need (with one actor per trial,
the orchestration cost was 2.4 s a trial on 2 cores, bench/RESULTS.md, "One W&B process per
sweep"). ``FeedingWandbCallback`` keeps Ray's callback and its bookkeeping, and feeds each item,
with its run's ``RunSpec``, to the one actor.

Each run (``RunLog``) guarantees, whatever the other runs do (a run that fails is finished as
failed, named by ``wait_for_runs``, and the others go on):

* Its file is complete when its END answers: ``run.finish`` hands the exit record to W&B's
  service, which writes and closes the file right after, unasked to answer; the run waits until
  the file holds the exit record. (Ray used to kill the actor as soon as its task returned, and
  the service with it: on a loaded machine a file kept its 7-byte header alone.) At the phase's
  end ``wait_for_runs`` closes the process: runs still open are finished, then the service is
  torn down (``wandb.teardown``).
* ``wandb.init`` waits up to ``INIT_TIMEOUT_S`` (W&B's default, 90 s, is too short on a loaded
  machine: a run that could not start lost every result queued for it).
* A driver killed mid-sweep (a crash, a SLURM requeue) kills the logging process and W&B's
  writer with it: their offline runs stop mid-history (W&B buffers its records: the file can
  hold its 7-byte header alone), without a summary. A restored trial starts a new run with the
  same id, which alone would hold only the tasks trained after the restart. So every row is
  journaled to ``SWEEP/wandb/rows/ID.jsonl`` (a flushed line per row, before ``run.log``); a
  new run of that id logs the journal's rows first, then moves the earlier run directories out
  of the ``offline-run-*`` pattern (to ``replaced-run-*``), so that
  ``wandb sync SWEEP/wandb/offline-run-*`` uploads one complete run per trial. The same path
  serves a logging process that Ray restarted: it starts empty, and the next item of each run
  it does not know opens that run again from its journal.
* Its step is ``tasks_completed``, not Tune's ``training_iteration``: a restored trial's
  iteration count restarts from Tune's last snapshot, which may lag behind what was logged.
  Tasks no report reached (a killed trial process, or items Ray retried out of order on a
  restarted actor) are rebuilt from the trial's checkpoint when a later task shows the gap.

The sweep waits for the runs to finish writing, up to ``FINISH_TIMEOUT_S``, and names every
run it could not complete (see ``wait_for_runs``).

Offline run files are read with ``read_records``: W&B's own record format (a LevelDB-style log
of ``wandb.proto`` ``Record`` messages in 32 KiB blocks, after a 7-byte header); wandb >= 0.20
no longer ships a Python reader for it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem

from pah.io import atomic_write_bytes
from pah.retry import retrying

__all__ = ["INIT_TIMEOUT_S", "FINISH_TIMEOUT_S", "FILE_TIMEOUT_S", "read_records", "history_rows", "summary_of",
           "config_of", "is_finished", "run_is_complete", "history_exists", "warn_lost_history", "RunSpec", "RunLog",
           "SharedWandbActor", "FeedingWandbCallback", "complete_ended_runs", "wait_for_runs"]

INIT_TIMEOUT_S = 600.0
FINISH_TIMEOUT_S = 600.0
FILE_TIMEOUT_S = 120.0  # from a run's finish to the exit record in its file (W&B's service writes it)
#: a finished run whose file has not changed for this long, without its exit record: W&B's service gave it up
STALLED_S = 20.0

_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version
_CHUNK = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)
_BLOCK = 32768


def read_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb.proto`` Records of an offline run file, in order; a truncated tail is ignored."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        return
    ident, magic, _ = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = _HEADER.size, []
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, n, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        if pos + _CHUNK.size + n > len(data):
            return  # written in part when the writer died
        parts.append(data[pos + _CHUNK.size:pos + _CHUNK.size + n])
        pos += _CHUNK.size + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _items(items) -> dict[str, Any]:
    return {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in items}


def history_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows a run logged (``wandb.log``), each a dict with ``_step`` and the logged keys."""
    return [_items(r.history.item) for r in read_records(path) if r.WhichOneof("record_type") == "history"]


def summary_of(path: str | Path) -> dict[str, Any]:
    """The run's final summary (the last summary record wins, key by key)."""
    out: dict[str, Any] = {}
    for r in read_records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
    return out


def config_of(path: str | Path) -> dict[str, Any]:
    """The run's config: what ``wandb.init`` got (in the run record), then its config updates."""
    out: dict[str, Any] = {}
    for r in read_records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            out.update(_items((r.run.config if kind == "run" else r.config).update))
    out.pop("_wandb", None)
    return out


def is_finished(path: str | Path) -> bool:
    """The run file holds its exit record (``wandb.finish`` completed)."""
    return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))


@dataclass(frozen=True)
class RunSpec:
    """What one trial's run is opened with. Sent with every item for the run, so that a restarted
    logging process (Ray's ``max_restarts``) can open a run it has not seen again from its journal."""

    key: str  # one per opening: a trial whose run is opened again (a restart in the same Tune run) gets a new one
    logdir: str
    exclude: tuple[str, ...]
    to_config: tuple[str, ...]
    init: dict[str, Any]  # wandb.init's keywords: id, dir, project, group, config, ...

    @property
    def run_id(self) -> str | None:
        return self.init.get("id")

    @property
    def root(self) -> str | None:
        return self.init.get("dir")


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + "/") for n in names)


class RunLog:
    """One trial's W&B run inside the shared logging process (``SharedWandbActor``).

    Fed one item at a time (``feed``): the first opens the run (journal replayed, earlier runs of
    its id renamed), END finishes it and waits until its file holds the exit record. A run that
    fails is finished as failed (so W&B's service lets it go) and its error is kept: later items
    are dropped and END raises it, for ``wait_for_runs`` to name the run. Other runs go on.
    """

    def __init__(self, spec: RunSpec, wandb: Any):
        self.spec, self._wandb = spec, wandb
        self.state = "new"  # then "logging", then "finished"
        self.failure: Exception | None = None
        self._run: Any = None
        self._journal = None
        self._last = 0  # steps are tasks_completed: 1, 2, ...
        self._last_result: dict[str, Any] | None = None
        self._rewritten = False

    def feed(self, item: tuple[Any, Any]) -> None:
        """Handle one ``(_QueueItem, content)`` as Tune sent it; END's content is the last result or None."""
        end = item[0].name == "END"
        if self.failure is not None:
            self.state = "finished"
            if end:
                raise self.failure
            return
        if self.state == "finished":
            return
        try:
            if self.state == "new":
                self._start()
            if end:
                if item[1]:  # the trial's last result again: Ray may run a retried item after END
                    self._result(item[1])
                self.finish()
            elif item[0].name == "CHECKPOINT":
                self._checkpoint(item[1])
            else:
                self._result(item[1])
        except Exception as e:  # noqa: BLE001 - this run's failure, not the process's
            self.failure = e
            self._give_up()
            if end:
                raise

    def _close(self) -> Any:
        """The journal closed and the run handed back (None if none was started): this log is finished."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        run, self._run = self._run, None
        self.state = "finished"
        return run

    def finish(self) -> None:
        """Finish the run; return once its offline file holds the exit record.

        W&B's service stops writing a run's file for good after one write failed (a full disk: every
        later record is refused, ``transactionlog: error ...`` in the run's internal log, if that line
        found room), and the exit record never comes (the file stands still for ``STALLED_S``). Such a
        run is written again, once, as a new run of the same id from the journal (whose lines waited
        for room) and the last result; the broken one becomes ``replaced-run-*``. A rewrite that fails
        too is raised, for ``wait_for_runs`` to name the run."""
        run = self._close()
        if run is None:
            return
        if self._written(run):
            return
        if self._rewritten:
            raise RuntimeError(f"W&B could not write {run.settings.sync_file}, written again from its journal")
        self._rewritten = False
        self._last = 0
        self._start()
        if self._last_result is not None:
            self._result(self._last_result)
        self.finish()

    @staticmethod
    def _written(run: Any) -> bool:
        """``run.finish()``, then wait until its file holds the exit record: True; False as soon as W&B's
        service says it could not write the file, or the file stands still for ``STALLED_S`` without it;
        a RuntimeError after ``FILE_TIMEOUT_S``."""
        run_file, internal_log = Path(run.settings.sync_file), Path(run.settings.log_internal)
        run.finish()
        # finish() returns once W&B's service has the exit record; the service writes the file when it
        # closes the run's stream, which finish() asks for without waiting. Wait for it here: the run is
        # complete on disk when END answers (without it, a file kept its 7-byte header alone).
        deadline, pause = time.monotonic() + FILE_TIMEOUT_S, 0.02
        size, still_since = -1, time.monotonic()
        while not is_finished(run_file):
            now = time.monotonic()
            try:
                grown = run_file.stat().st_size != size
                size = run_file.stat().st_size
            except OSError:
                grown = False
            still_since = now if grown else still_since
            # its own log says so, or (that line lost on the full disk too) the file stands still, unfinished
            if _write_failed(internal_log) or now - still_since > STALLED_S:
                print(f"warning: W&B could not write {run_file} (see {internal_log}): writing the run again from "
                      "its journal", file=sys.stderr, flush=True)
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run_file} has no exit record {FILE_TIMEOUT_S:.0f} s after wandb's finish")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        return True

    def _give_up(self) -> None:
        run = self._close()
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001, S110 - the first error is the one reported
                pass

    def _start(self) -> None:
        init = dict(self.spec.init)
        settings = dict(init.pop("settings", None) or {})
        settings.setdefault("init_timeout", INIT_TIMEOUT_S)
        settings.setdefault("console", "off")  # the shared process's output belongs to no trial
        settings.setdefault("x_disable_stats", True)  # nor its CPU and memory; and each sampler costs
        init.update(reinit="create_new", settings=settings)  # one process, many runs at once
        rows_path = self._rows_path()
        rows = _read_rows(rows_path) if rows_path else []
        if rows_path:  # whole lines only, before this run appends to it
            atomic_write_bytes(rows_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        rows.sort(key=lambda r: r["_step"])
        earlier = self._earlier_runs()  # before init creates this run's own directory
        self._run = self._wandb.init(**init)
        self._run.config.update({"trial_log_path": self.spec.logdir}, allow_val_change=True)
        for row in rows:  # what the earlier run(s) of this trial logged, in the order logged
            step = row.pop("_step")
            if step > self._last:
                self._run.log(row, step=step)
                self._last = step
        for d in earlier:  # out of the offline-run-* pattern: `wandb sync` uploads this run alone
            d.rename(d.with_name("replaced-run-" + d.name.removeprefix("offline-run-")))
            _forget_in_bucket(self.spec.root, d)
        self._journal = open(rows_path, "ab", buffering=0) if rows_path else None  # noqa: SIM115 - closed in finish
        self.state = "logging"

    def _split(self, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A Tune result as (row to log, config update): excluded keys dropped, Tune's bookkeeping
        (``to_config``) to the config, values W&B cannot chart dropped."""
        from ray.air.integrations.wandb import _is_allowed_type
        from ray.tune.utils import flatten_dict

        config = {k: v for k, v in (result.get("config") or {}).items() if k != "callbacks"}
        row = {}
        for key, value in flatten_dict(result, delimiter="/").items():
            if _under(key, self.spec.exclude):
                continue
            if _under(key, self.spec.to_config):
                config[key] = value
            elif _is_allowed_type(value):
                row[key] = value
        return row, config

    def _result(self, result: dict[str, Any]) -> None:
        self._last_result = result
        log, config_update = self._split(result)
        self._run.config.update(config_update, allow_val_change=True)
        if "tasks_completed" not in log:
            # not a task's report (a restored trial's last result may be Tune's bookkeeping alone): no row,
            # which would hold no task's metrics and break the run's one-row-per-task history
            return
        step = int(log["tasks_completed"])
        # Tasks no run logged (a report lost with a killed trial process, or a driver killed
        # before its logger caught up; the trial resumes after them): their rows, rebuilt from
        # the accuracy matrices in the trial's checkpoint.
        if step > self._last + 1:
            for row in self._rows_from_checkpoint():
                if self._last < row["_step"] < step:
                    self._log(row.pop("_step"), row)
                    self._last = max(self._last, row["tasks_completed"])
        if step > self._last:  # a task trained again after a restart is logged once
            self._log(step, log)
            self._last = step

    def _checkpoint(self, path: str) -> None:
        artifact = self._wandb.Artifact(name=f"checkpoint_{self.spec.init.get('name', self.spec.run_id)}",
                                        type="model")
        artifact.add_dir(path)
        self._run.log_artifact(artifact)

    def _log(self, step: int, row: dict[str, Any]) -> None:
        """To the journal first (a flushed line: a kill cannot lose it), then to W&B."""
        if self._journal is not None:
            line = (json.dumps({"_step": step, **row}, default=str) + "\n").encode()
            retrying(lambda: _append(self._journal, line), f"disk of {Path(self._journal.name).parent}",
                     what=f"logging task {step} of W&B run {self.spec.run_id}")
        self._run.log(row, step=step)

    def _rows_path(self) -> Path | None:
        if not self.spec.run_id or not self.spec.root:
            return None
        path = Path(self.spec.root, "wandb", "rows", f"{self.spec.run_id}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _rows_from_checkpoint(self) -> list[dict[str, Any]]:
        return task_rows(self.spec.root, self.spec.run_id)

    def _earlier_runs(self) -> list[Path]:
        if not self.spec.run_id or not self.spec.root:
            return []
        return sorted(Path(self.spec.root, "wandb").glob(f"offline-run-*-{self.spec.run_id}"))


def _write_failed(internal_log: Path) -> bool:
    """W&B's service logged that it could not write a run's transaction log (wandb-core's wording)."""
    try:
        return b"transactionlog: error" in internal_log.read_bytes()
    except OSError:
        return False


def _append(journal, line: bytes) -> None:
    """Append one whole line to ``journal`` (unbuffered, opened for appending), or nothing: a write cut short
    (a full disk) is taken back, so that the retry writes the line once."""
    size = os.fstat(journal.fileno()).st_size
    try:
        n = journal.write(line)
        if n != len(line):
            raise OSError(errno.ENOSPC, f"No space left on device (wrote {n} of {len(line)} bytes)")
    except OSError:
        os.ftruncate(journal.fileno(), size)
        raise


def _forget_in_bucket(root: str, old: Path) -> None:
    """A run folder renamed in a staged sweep goes from the bucket by its old name too: the staging dir's
    next upload brings the new name, and without this the bucket kept both, two ``offline-run-*`` folders of
    one trial (seen after a head was lost and the sweep resumed). Best effort: a note if it fails."""
    from pah import storage

    remote = storage.remote_of(root)
    if remote is None:
        return
    uri = storage.join(remote, "wandb", old.name)
    try:
        storage.delete_tree(uri)
    except Exception as e:  # noqa: BLE001 - the bucket keeps a stale copy; `wandb sync` would upload it twice
        print(f"note: could not remove {uri} ({type(e).__name__}: {e}); remove it before `wandb sync`",
              file=sys.stderr, flush=True)


class SharedWandbActor:
    """The one logging process of a sweep phase: every trial's W&B run, open at the same time
    (``wandb.init(reinit="create_new")``), each a ``RunLog``, with one W&B service behind them all.

    Ray runs it as a single-threaded actor: ``feed`` calls run one at a time in the order the
    driver made them, so each run gets its items as Tune sent them. Restarted by Ray after a crash,
    it starts empty; the next item of a run it does not know opens that run again from its
    ``RunSpec`` and journal, as a restored trial's run is.
    """

    def __init__(self) -> None:
        import os

        import wandb

        os.environ["WANDB_START_METHOD"] = "thread"
        _list_packages_once(wandb)
        self._wandb = wandb
        self._runs: dict[str, RunLog] = {}

    def feed(self, spec: RunSpec, item: tuple[Any, Any]) -> None:
        run = self._runs.get(spec.key)
        if run is None:
            for other in self._runs.values():  # W&B's service knows a run by its id: one open run per id
                if other.spec.run_id == spec.run_id and other.state == "logging":
                    try:
                        other.feed((_QueueItem.END, None))
                    except Exception:  # noqa: BLE001, S110 - kept as its failure; its own END reports it
                        pass
            run = self._runs[spec.key] = RunLog(spec, self._wandb)
        run.feed(item)

    def close(self) -> list[str]:
        """Finish the runs still open (their END never came), then stop W&B's service, which flushes
        and closes every file. Returns one line per run that could not be finished."""
        problems = []
        for run in self._runs.values():
            if run.state != "finished":
                try:
                    run.feed((_QueueItem.END, None))
                except Exception as e:  # noqa: BLE001 - reported by the caller
                    problems.append(f"{run.spec.run_id}: {type(e).__name__}: {e}")
        try:
            self._wandb.teardown()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - wandb exits on a failed service: not this process
            problems.append(f"W&B's service: {type(e).__name__}: {e}")
        return problems


def _list_packages_once(wandb: Any) -> None:
    """Each ``wandb.init`` lists every installed distribution for the run's ``requirements.txt``
    (``wandb.util.working_set``: importlib.metadata parsing some 170 METADATA files, ~0.2 s of CPU a
    run here, 12 of a 40-trial sweep's ~70 CPU seconds, taken from the trials on 2 cores). One
    process holds every run of a sweep, all in one environment: it lists them once, and every run
    still gets the whole list. Where a W&B version has no such function, nothing changes."""
    util = getattr(wandb, "util", None)
    listing = getattr(util, "working_set", None)
    if listing is None or getattr(listing, "listed_once", False):
        return
    listed = functools.cache(lambda: tuple(listing()))

    def working_set() -> Iterator[Any]:
        return iter(listed())

    working_set.listed_once = True  # type: ignore[attr-defined]
    util.working_set = working_set


class _Feed:
    """Stands in for a trial's Ray ``Queue``: ``put`` hands the item, with the run's spec, to the
    shared logging actor.

    Calls from one caller to a single-threaded actor run in the order made, so the items
    arrive as Tune sent them; but not the calls Ray retries on a restarted actor, which run
    in any order. So END carries the last result again (a result that comes after it is
    dropped, its run being finished), and a result that comes after a later one leaves a gap
    that the run fills from the trial's checkpoint. END's answer is what the callback waits
    on: the run is then complete on disk.
    """

    def __init__(self, callback: FeedingWandbCallback, trial, spec: RunSpec):
        self._callback, self._trial, self._spec = callback, trial, spec
        self._ended = False
        self._last: dict[str, Any] | None = None

    def put(self, item: tuple[Any, Any]) -> None:
        if self._ended:
            return
        if item[0].name == "RESULT":
            self._last = item[1]
        elif item[0].name == "END":
            item = (item[0], self._last)
        ref = self._callback._shared.feed.remote(self._spec, item)
        if item[0].name == "END":
            self._ended = True
            self._callback._trial_logging_futures[self._trial] = ref
            self._callback._logging_future_to_trial[ref] = self._trial


class FeedingWandbCallback(WandbLoggerCallback):
    """Ray's W&B callback with one logging process for all the runs of a sweep phase
    (``SharedWandbActor``), fed directly, without the ``Queue`` actor Ray starts per trial.

    Ray's bookkeeping stays: ``_trial_logging_actors`` says which trials have an open run (each maps
    to the shared actor), ``_trial_logging_futures`` holds each run's END answer. A finished run is
    forgotten without stopping the actor (``_cleanup_logging_actor``); ``wait_for_runs`` closes it
    at the phase's end.
    """

    _shared = None  # the actor, started with the first run

    def _start_logging_actor(self, trial, exclude_results: list[str], **wandb_init_kwargs) -> None:
        import os
        import uuid

        import ray
        from ray.air.integrations.wandb import WANDB_ENV_VAR, _force_on_current_node

        if trial in self._trial_logging_actors:  # a restarted trial keeps its run
            return
        warn_lost_history(trial, wandb_init_kwargs.get("dir"), wandb_init_kwargs.get("id"))
        if self._shared is None:
            env_vars = {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]} if WANDB_ENV_VAR in os.environ else {}
            self._shared = ray.remote(
                num_cpus=0, **_force_on_current_node(), runtime_env={"env_vars": env_vars},
                max_restarts=-1, max_task_retries=-1,
            )(SharedWandbActor).remote()
        spec = RunSpec(key=uuid.uuid4().hex, logdir=str(trial.local_path), exclude=tuple(exclude_results),
                       to_config=tuple(self.AUTO_CONFIG_KEYS), init=dict(wandb_init_kwargs))
        self._trial_logging_actors[trial] = self._shared
        self._trial_queues[trial] = _Feed(self, trial, spec)

    def _cleanup_logging_actor(self, trial) -> None:
        """The trial's run has finished (or is given up on): forget it; the actor goes on with the others."""
        self._trial_queues.pop(trial, None)
        self._trial_logging_futures.pop(trial, None)
        self._trial_logging_actors.pop(trial, None)

    def close_shared_actor(self, timeout_s: float) -> None:
        """Close the logging process (``SharedWandbActor.close``: open runs finished, W&B's service
        stopped, every file complete), waiting up to ``timeout_s``, then stop it."""
        import ray

        actor, self._shared = self._shared, None
        if actor is None:
            return
        ref = actor.close.remote()
        done, _ = ray.wait([ref], timeout=timeout_s)
        try:
            problems = ray.get(ref) if done else [f"W&B's logging process did not close in {timeout_s:.0f} s"]
        except Exception as e:  # noqa: BLE001 - reported, the sweep's results are elsewhere
            problems = [f"W&B's logging process: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
        for p in problems:
            print(f"warning: W&B: {p}; the trials' results are in their result.json", file=sys.stderr, flush=True)
        ray.kill(actor)


def history_exists(root: str | Path, run_id: str) -> bool:
    """The sweep's wandb/ folder holds something of this run: its journal of rows or an offline run."""
    wandb_dir = Path(root, "wandb")
    journal = wandb_dir / "rows" / f"{run_id}.jsonl"
    return (journal.is_file() and journal.stat().st_size > 0) or any(wandb_dir.glob(f"*-run-*-{run_id}"))


def warn_lost_history(trial, root: str | Path | None, run_id: str | None) -> None:
    """A trial that logged tasks before (a restored one) whose W&B history is gone (wandb/ deleted, its
    journal or run files removed): a warning naming the run, on the driver's stderr. Its new run logs the
    tasks again from the trial's checkpoint (``RunLog._rows_from_checkpoint``)."""
    done = int((getattr(trial, "last_result", None) or {}).get("tasks_completed") or 0)
    if not done or not root or not run_id or history_exists(root, run_id):
        return
    print(f"warning: the W&B history of trial {run_id} is lost ({Path(root, 'wandb')} holds no journal "
          f"rows/{run_id}.jsonl and no offline run of it, though it trained {done} task(s)): its run "
          f"{run_id} is rebuilt from the trial's checkpoint, per-task metrics only",
          file=sys.stderr, flush=True)


def task_rows(root: str | Path | None, run_id: str | None) -> list[dict[str, Any]]:
    """A trial's per-task W&B rows (``_step``, ``tasks_completed`` and the metrics so far), rebuilt from
    what it left: its ``result.json`` if it finished, else its newest task checkpoint. Looked for in the
    sweep dir ``root``, then, where ``root`` is the driver's staging copy of a bucket, in the bucket: the
    trials of a sweep on object storage keep their checkpoints there and nowhere else, and a head node
    that was lost took the rows its driver had journaled since the last sync with it."""
    if not run_id or not root:
        return []
    from pah import storage

    found = sorted(Path(root).glob(f"trials/*/{run_id}/result.json"))
    if found:
        return _rows_of_result(found[0].read_bytes())
    found = sorted(Path(root).glob(f"trials/*/{run_id}/checkpoint/state.pt"))
    rows = _rows_of_state(found[0].read_bytes()) if found else []
    remote = storage.remote_of(root)
    if remote is None:
        return rows
    try:  # the staging copy may hold an older checkpoint than the bucket's newest: the most rows win
        for phase in ("search", "confirm"):
            data = storage.read_bytes(storage.join(remote, "trials", phase, run_id, "result.json"))
            if data is not None:
                return _rows_of_result(data)
        newest = _newest_remote_checkpoint(remote, run_id)
        stored = _rows_of_state(storage.read_bytes(newest)) if newest else []
    except OSError as e:  # the bucket out of reach: the rows stay missing, and the run says so
        print(f"warning: the W&B rows of trial {run_id} could not be rebuilt from {remote} ({e})",
              file=sys.stderr, flush=True)
        return rows
    return max(rows, stored, key=len)


def _rows_of(acc: list[list[float]], val: list[list[float]] | None) -> list[dict[str, Any]]:
    from pah.metrics import summarize
    from sweeps.trainable import metrics_of_result

    return [{"_step": t + 1, "tasks_completed": t + 1,
             **metrics_of_result(summarize(acc[: t + 1]), summarize(val[: t + 1]) if val else None)}
            for t in range(len(acc))]


def _rows_of_result(data: bytes) -> list[dict[str, Any]]:
    try:
        result = json.loads(data)
        acc = [[x for x in row if x is not None] for row in result["acc_matrix"]]
        val = [[x for x in row if x is not None] for row in (result.get("val_matrix") or [])]
    except (ValueError, KeyError, TypeError):  # damaged: the trial's own checks report it
        return []
    return _rows_of(acc, val if val and all(val) else None)


def _rows_of_state(data: bytes | None) -> list[dict[str, Any]]:
    if not data:
        return []
    import io

    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - unreadable: the trial itself reports and retrains it
        return []
    acc, val = state.get("acc_rows") or [], state.get("val_rows") or []
    has_val = (state.get("config") or {}).get("data", {}).get("val_fraction", 0) > 0
    return _rows_of(acc, val if has_val else None)


def _newest_remote_checkpoint(remote: str, run_id: str) -> str | None:
    """``state.pt`` of the complete Tune checkpoint of trial ``run_id`` under ``remote``/tune holding the most
    tasks (``sweeps.trainable.newest_checkpoint_in``), or None."""
    import pyarrow.fs as pafs

    from pah import storage
    from sweeps.trainable import STATE, newest_checkpoint_in

    fs, root = storage.resolve(storage.join(remote, "tune"))

    def dirs(path: str) -> list[str]:
        sel = pafs.FileSelector(path, allow_not_found=True)
        return [i.path for i in fs.get_file_info(sel) if i.type == pafs.FileType.Directory]

    best: tuple[int, Any] | None = None
    for phase in dirs(root):
        for trial in dirs(phase):
            if f"_{run_id}_" not in trial.rsplit("/", 1)[-1] + "_":
                continue
            found, _ = newest_checkpoint_in(fs, trial)
            if found is not None and (best is None or found[0] > best[0]):
                best = found
    scheme = remote.split("://", 1)[0]
    return f"{scheme}://{best[1].path}/{STATE}" if best else None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The journal's rows; a last line cut short by a kill is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def run_is_complete(sweep_dir: str | Path, trial_id: str) -> bool:
    """The trial has an offline run that holds its exit record."""
    runs = Path(sweep_dir, "wandb").glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb")
    return any(is_finished(f) for f in runs)


def complete_ended_runs(callback, trials, sweep_dir: str | Path) -> None:
    """Log again the runs of trials that ended with their run cut short.

    A trial that ended before its driver was killed is never started again by a restore, so
    its cut-short run would stay so: it gets a new run here, fed its last result, which replays
    its journal and rebuilds the rest from its checkpoint (see ``RunLog``).
    """
    for trial in trials:
        if (trial.status == "TERMINATED" and trial.last_result and trial not in callback._trial_logging_actors
                and not run_is_complete(sweep_dir, trial.trial_id)):
            callback.log_trial_result(trial.last_result.get("training_iteration", 0), trial, trial.last_result)
            callback._signal_logging_actor_stop(trial)


def wait_for_runs(callback, timeout_s: float = FINISH_TIMEOUT_S) -> None:
    """Wait (up to ``timeout_s``) for every run of ``callback`` to finish, then close its logging process.

    A run that failed or did not finish in time is named on stderr, with where the trial's own
    results are; the other runs are complete on disk either way. The process is closed last
    (``FeedingWandbCallback.close_shared_actor``): W&B's service stopped, every file closed.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    futures = dict(callback._logging_future_to_trial)
    remaining = []
    if futures:
        done, remaining = ray.wait(list(futures), num_returns=len(futures), timeout=timeout_s)
        for f in done:
            try:
                ray.get(f)
            except Exception as e:  # noqa: BLE001 - reported, the sweep's results are elsewhere
                cause = getattr(e, "cause", None) or e  # a RayTaskError carries the run's own error
                print(f"warning: the W&B run of trial {futures[f].trial_id} failed ({type(cause).__name__}: "
                      f"{str(cause).splitlines()[0] if str(cause) else ''}); its results are in the trial's "
                      "result.json", file=sys.stderr, flush=True)
        for f in remaining:
            print(f"warning: the W&B run of trial {futures[f].trial_id} did not finish writing in {timeout_s:.0f} s "
                  "and was stopped: its offline run may lack its last rows; its results are in the trial's "
                  "result.json", file=sys.stderr, flush=True)
    callback._cleanup_logging_actors(timeout=0, kill_on_timeout=True)
    # a run still busy holds the process: a short wait then; else the time left, 30 s at least
    callback.close_shared_actor(10.0 if remaining else max(30.0, deadline - time.monotonic()))
