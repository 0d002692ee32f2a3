"""Complete W&B runs for a sweep's trials: every trial's run holds its config, its per-task
history and its summary when ``pah sweep`` returns, after a resume as after a clean run.

Ray's ``WandbLoggerCallback`` logs each trial from a logging actor (a process of its own) that
runs ``wandb.init``, logs what the driver queues and calls ``wandb.finish``. Three ways it lost
data, and what this module does about them:

* ``wandb.finish`` hands the run to W&B's service process, which writes the offline file; it
  flushes and exits in ``wandb.teardown``, which wandb runs in an atexit hook. Ray kills the
  actor (and the service with it) as soon as its task returns, so no atexit hook runs: on a
  loaded machine the file kept its 7-byte header alone although the trial had finished. The
  actor here calls ``wandb.teardown()`` itself and checks that the file holds its exit record.
* ``wandb.init`` gives up after 90 s by default; on a loaded machine (Ray's workers used to run
  at nice 15) that is too short, the actor's task fails and every result queued for it is lost,
  leaving an offline file that holds its 7-byte header alone. The actor here waits up to
  ``INIT_TIMEOUT_S`` for W&B to start.
* A driver killed mid-sweep (a crash, a SLURM requeue) kills the logging actors and W&B's
  writer with it: their offline runs stop mid-history (W&B buffers its records: the file can
  hold its 7-byte header alone), without a summary. A restored trial starts a new run with the
  same id, which alone would hold only the tasks trained after the restart. So the actor here
  journals every row it logs to ``SWEEP/wandb/rows/ID.jsonl`` (a flushed line per row, before
  ``wandb.log``); a new run of that id logs the journal's rows first, then moves the earlier
  run directories out of the ``offline-run-*`` pattern (to ``replaced-run-*``), so that
  ``wandb sync SWEEP/wandb/offline-run-*`` uploads one complete run per trial.
* Its step is ``tasks_completed``, not Tune's ``training_iteration``: a restored trial's
  iteration count restarts from Tune's last snapshot, which may lag behind what was logged.

The sweep waits for the actors to finish writing, up to ``FINISH_TIMEOUT_S``, and names every
run it could not complete (see ``wait_for_runs``).

Offline run files are read with ``read_records``: W&B's own record format (a LevelDB-style log
of ``wandb.proto`` ``Record`` messages in 32 KiB blocks, after a 7-byte header); wandb >= 0.20
no longer ships a Python reader for it.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from pah.io import atomic_write_bytes

__all__ = ["INIT_TIMEOUT_S", "FINISH_TIMEOUT_S", "read_records", "history_rows", "summary_of", "config_of",
           "is_finished", "run_is_complete", "history_exists", "warn_lost_history", "ReplayingWandbActor",
           "FeedingWandbCallback", "complete_ended_runs", "wait_for_runs"]

INIT_TIMEOUT_S = 600.0
FINISH_TIMEOUT_S = 600.0

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


class ReplayingWandbActor(_WandbLoggingActor):
    """Ray's logging actor: a longer ``wandb.init`` wait, earlier runs of its id replayed, and
    ``tasks_completed`` as the W&B step (a restored trial's ``training_iteration`` restarts from
    Tune's last snapshot, which may lag behind the tasks its earlier run logged).

    Fed one item at a time (``feed``, called in order on a single-threaded actor) rather than
    through Ray's ``Queue``, which is an actor of its own: one process per trial instead of two
    (a Ray worker process costs about a second of CPU to start). ``run`` still drains a queue,
    for a caller that has one.
    """

    _journal = None
    _last = 0  # steps are tasks_completed: 1, 2, ...
    _state = "new"  # then "logging", then "finished"
    _failure: BaseException | None = None

    def run(self):
        while self._state != "finished":
            self.feed(self.queue.get())

    def feed(self, item: tuple[Any, Any]) -> None:
        """Handle one ``(_QueueItem, content)``: the first starts the run, END finishes it.

        A run that could not start or log fails every later item with the same error, END
        included (the callback waits on END's result and names the run).
        """
        if self._failure is not None:
            raise self._failure
        if self._state == "finished":
            return
        item_type, item_content = item
        try:
            if self._state == "new":
                self._start()
            if item_type.name == "END":
                self._finish()
            elif item_type.name == "CHECKPOINT":
                self._handle_checkpoint(item_content)
            else:
                self._result(item_content)
        except BaseException as e:
            self._failure = e
            raise

    def _start(self) -> None:
        import os

        os.environ["WANDB_START_METHOD"] = "thread"
        settings = dict(self.kwargs.pop("settings", None) or {})
        settings.setdefault("init_timeout", INIT_TIMEOUT_S)
        rows_path = self._rows_path()
        rows = _read_rows(rows_path) if rows_path else []
        if rows_path:  # whole lines only, before this run appends to it
            atomic_write_bytes(rows_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        rows.sort(key=lambda r: r["_step"])
        earlier = self._earlier_runs()  # before init creates this run's own directory
        self._run = self._wandb.init(*self.args, settings=settings, **self.kwargs)
        self._run.config.trial_log_path = self._logdir
        for row in rows:  # what the earlier run(s) of this trial logged, in the order logged
            step = row.pop("_step")
            if step > self._last:
                self._wandb.log(row, step=step)
                self._last = step
        for d in earlier:  # out of the offline-run-* pattern: `wandb sync` uploads this run alone
            d.rename(d.with_name("replaced-run-" + d.name.removeprefix("offline-run-")))
        self._journal = open(rows_path, "a") if rows_path else None  # noqa: SIM115 - closed in _finish
        self._state = "logging"

    def _result(self, result: dict[str, Any]) -> None:
        log, config_update = self._handle_result(result)
        step = int(log.get("tasks_completed", log.get("training_iteration", self._last + 1)))
        self._wandb.config.update(config_update, allow_val_change=True)
        # Tasks no run logged (a report lost with a killed trial process, or a driver killed
        # before its logger caught up; the trial resumes after them): their rows, rebuilt from
        # the accuracy matrices in the trial's checkpoint.
        if step > self._last + 1:
            for row in self._rows_from_checkpoint():
                if self._last < row["_step"] < step:
                    self._log(self._journal, row.pop("_step"), row)
                    self._last = max(self._last, row["tasks_completed"])
        if step > self._last:  # a task trained again after a restart is logged once
            self._log(self._journal, step, log)
            self._last = step

    def _finish(self) -> None:
        if self._journal is not None:
            self._journal.close()
        run_file = Path(self._run.settings.sync_file)
        self._wandb.finish()
        # finish() hands the run to W&B's service process (wandb-core), which writes the file;
        # Ray kills this actor once the callback has its answer, and the service with it, so
        # wait for the service to write everything and exit. (wandb does this in an atexit hook,
        # which a killed actor never runs: under load the file kept its 7-byte header alone.)
        self._wandb.teardown()
        self._state = "finished"
        if not is_finished(run_file):
            raise RuntimeError(f"{run_file} has no exit record after wandb.finish and teardown")

    def _log(self, journal, step: int, row: dict[str, Any]) -> None:
        """To the journal first (a flushed line: a kill cannot lose it), then to W&B."""
        if journal is not None:
            journal.write(json.dumps({"_step": step, **row}, default=str) + "\n")
            journal.flush()
        self._wandb.log(row, step=step)

    def _rows_path(self) -> Path | None:
        run_id, root = self.kwargs.get("id"), self.kwargs.get("dir")
        if not run_id or not root:
            return None
        path = Path(root, "wandb", "rows", f"{run_id}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _rows_from_checkpoint(self) -> list[dict[str, Any]]:
        run_id, root = self.kwargs.get("id"), self.kwargs.get("dir")
        ckpts = sorted(Path(root).glob(f"trials/*/{run_id}/checkpoint/state.pt")) if run_id and root else []
        if not ckpts:
            return []
        import torch

        from pah.metrics import summarize
        from sweeps.trainable import metrics_of_result

        try:
            state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - unreadable: the trial itself reports and retrains it
            return []
        acc, val = state.get("acc_rows") or [], state.get("val_rows") or []
        has_val = (state.get("config") or {}).get("data", {}).get("val_fraction", 0) > 0
        return [{"_step": t + 1, "tasks_completed": t + 1,
                 **metrics_of_result(summarize(acc[: t + 1]), summarize(val[: t + 1]) if has_val else None)}
                for t in range(len(acc))]

    def _earlier_runs(self) -> list[Path]:
        run_id, root = self.kwargs.get("id"), self.kwargs.get("dir")
        if not run_id or not root:
            return []
        return sorted(Path(root, "wandb").glob(f"offline-run-*-{run_id}"))


class _Feed:
    """Stands in for a trial's Ray ``Queue``: ``put`` feeds the trial's logging actor directly.

    Calls from one caller to a single-threaded actor run in the order made, so the items
    arrive as Tune sent them. END's answer is what the callback waits on before it stops the
    actor (``_cleanup_logging_actors``, ``wait_for_runs``).
    """

    def __init__(self, callback: WandbLoggerCallback, trial, actor):
        self._callback, self._trial, self._actor = callback, trial, actor

    def put(self, item: tuple[Any, Any]) -> None:
        ref = self._actor.feed.remote(item)
        if item[0].name == "END" and self._trial not in self._callback._trial_logging_futures:  # one END counts
            self._callback._trial_logging_futures[self._trial] = ref
            self._callback._logging_future_to_trial[ref] = self._trial


class FeedingWandbCallback(WandbLoggerCallback):
    """Ray's W&B callback with one process per trial's run: its logging actor is fed directly
    (``ReplayingWandbActor.feed``), without the extra ``Queue`` actor Ray starts for each trial."""

    _logger_actor_cls = ReplayingWandbActor

    def _start_logging_actor(self, trial, exclude_results: list[str], **wandb_init_kwargs) -> None:
        import os

        import ray
        from ray.air.integrations.wandb import WANDB_ENV_VAR, _force_on_current_node

        if trial in self._trial_logging_actors:  # a restarted trial keeps its run
            return
        warn_lost_history(trial, wandb_init_kwargs.get("dir"), wandb_init_kwargs.get("id"))
        if not self._remote_logger_class:
            env_vars = {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]} if WANDB_ENV_VAR in os.environ else {}
            self._remote_logger_class = ray.remote(
                num_cpus=0, **_force_on_current_node(), runtime_env={"env_vars": env_vars},
                max_restarts=-1, max_task_retries=-1,
            )(self._logger_actor_cls)
        actor = self._remote_logger_class.remote(logdir=trial.local_path, queue=None, exclude=exclude_results,
                                                 to_config=self.AUTO_CONFIG_KEYS, **wandb_init_kwargs)
        self._trial_logging_actors[trial] = actor
        self._trial_queues[trial] = _Feed(self, trial, actor)


def history_exists(root: str | Path, run_id: str) -> bool:
    """The sweep's wandb/ folder holds something of this run: its journal of rows or an offline run."""
    wandb_dir = Path(root, "wandb")
    journal = wandb_dir / "rows" / f"{run_id}.jsonl"
    return (journal.is_file() and journal.stat().st_size > 0) or any(wandb_dir.glob(f"*-run-*-{run_id}"))


def warn_lost_history(trial, root: str | Path | None, run_id: str | None) -> None:
    """A trial that logged tasks before (a restored one) whose W&B history is gone (wandb/ deleted, its
    journal or run files removed): a warning naming the run, on the driver's stderr. Its new run logs the
    tasks again from the trial's checkpoint (``ReplayingWandbActor._rows_from_checkpoint``)."""
    done = int((getattr(trial, "last_result", None) or {}).get("tasks_completed") or 0)
    if not done or not root or not run_id or history_exists(root, run_id):
        return
    print(f"warning: the W&B history of trial {run_id} is lost ({Path(root, 'wandb')} holds no journal "
          f"rows/{run_id}.jsonl and no offline run of it, though it trained {done} task(s)): its run "
          f"{run_id} is rebuilt from the trial's checkpoint, per-task metrics only",
          file=sys.stderr, flush=True)


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
    its journal and rebuilds the rest from its checkpoint (see ``ReplayingWandbActor``).
    """
    for trial in trials:
        if (trial.status == "TERMINATED" and trial.last_result and trial not in callback._trial_logging_actors
                and not run_is_complete(sweep_dir, trial.trial_id)):
            callback.log_trial_result(trial.last_result.get("training_iteration", 0), trial, trial.last_result)
            callback._signal_logging_actor_stop(trial)


def wait_for_runs(callback, timeout_s: float = FINISH_TIMEOUT_S) -> None:
    """Wait (up to ``timeout_s``) for every logging actor of ``callback`` to finish its run.

    A run that failed or did not finish in time is named on stderr, with where the trial's own
    results are; its actor is then stopped, as Ray's callback does at the experiment's end.
    """
    import ray

    futures = dict(callback._logging_future_to_trial)
    if futures:
        done, remaining = ray.wait(list(futures), num_returns=len(futures), timeout=timeout_s)
        for f in done:
            try:
                ray.get(f)
            except Exception as e:  # noqa: BLE001 - reported, the sweep's results are elsewhere
                print(f"warning: the W&B run of trial {futures[f].trial_id} failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); its results are in the trial's result.json",
                      file=sys.stderr, flush=True)
        for f in remaining:
            print(f"warning: the W&B run of trial {futures[f].trial_id} did not finish writing in {timeout_s:.0f} s "
                  "and was stopped: its offline run may lack its last rows; its results are in the trial's "
                  "result.json", file=sys.stderr, flush=True)
    callback._cleanup_logging_actors(timeout=0, kill_on_timeout=True)
