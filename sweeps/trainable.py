"""The Ray Tune trainable: one whole task sequence, reported and checkpointed after every task.

Each trial trains in its own directory inside the sweep, ``SWEEP/trials/PHASE/TRIAL_ID``,
where ``run_trial`` keeps ``checkpoint/state.pt`` and writes ``result.json``. After each
task the trainable reports the metrics so far with that checkpoint directory as a Ray
checkpoint, so a retried or restored trial resumes at the next task. Next to the result
it keeps small files for people and tests: ``params.json`` (what was sampled),
``pid`` (the worker process), ``log.txt`` (one line per start and per task trained)
and ``error.json`` (why it failed, if it did).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pah.io import atomic_write_json, read_json
from sweeps.phases import read_params  # noqa: F401  (re-exported: the driver and tests read params here)

__all__ = ["make_trainable", "trial_dir", "metrics_of_result", "params_of", "read_params", "META"]

#: written next to state.pt before each report: how many tasks that checkpoint holds
META = "meta.json"
#: the trial's state in a checkpoint dir (pah.trial.CHECKPOINT's name), and its size as meta.json records it
STATE = "state.pt"
STATE_BYTES = "state_bytes"


def trial_dir(sweep_dir: str | Path, phase: str, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / phase / trial_id


def metrics_of_result(metrics: dict[str, Any] | None, val_metrics: dict[str, Any] | None) -> dict[str, float]:
    """The flat names a trial reports: avg_acc, forgetting, bwt and their val_ twins."""
    out = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
    out.update({f"val_{k}": float(v) for k, v in (val_metrics or {}).items() if v is not None})
    return out


def _log(out: Path, line: str) -> None:
    text = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {line}\n"

    def append() -> None:
        with open(out / "log.txt", "a") as f:
            f.write(text)

    from pah.retry import retrying as retry

    retry(append, f"disk of {out}", what="writing log.txt")  # a full disk: waited out (pah/retry.py)


#: a trial started again after a failed attempt (an error, or its process killed: a lost node, out of
#: memory) waits this long first, doubled for each failed attempt in a row (at most 60 s), so that
#: Tune's ``max_failures`` is not spent within seconds on a fault that passes
RESTART_BACKOFF_ENV = "PAH_RESTART_BACKOFF_S"
_TS = "%Y-%m-%dT%H:%M:%S"


def failed_attempts(lines: list[str], now: float, window_s: float = 600.0) -> tuple[int, str]:
    """(how many of the trial's latest attempts failed in a row, within ``window_s`` of ``now``; how the last
    one ended: its error line, or 'killed'), read from its log.txt ``lines``."""
    attempts: list[list[Any]] = []  # [start time, how it ended or None]
    for ln in lines:
        ts, _, text = (ln.split(" ", 2) + ["", ""])[:3]
        if text.startswith("start "):
            try:
                attempts.append([time.mktime(time.strptime(ts, _TS)), None])
            except ValueError:
                continue
        elif attempts and (text.startswith(("finished", "error ")) or text.startswith("error again")):
            attempts[-1][1] = text
    n, how = 0, ""
    for started, ended in reversed(attempts):
        if ended == "finished" or now - started > window_s:
            break
        n += 1
        how = how or (ended or "killed: a lost node, out of memory, or a killed driver")
    return n, how


def restart_delay(failed: int) -> float:
    try:
        base = max(0.0, float(os.environ.get(RESTART_BACKOFF_ENV, "2")))
    except ValueError:
        base = 2.0
    return min(base * 2 ** max(0, failed - 1), 60.0) if failed else 0.0


def _record_error(out: Path, e: BaseException, push: Callable[..., None]) -> None:
    """error.json (type, message, tasks in the checkpoint; ``storage``: 'unreachable' or 'full' when a storage
    outage outlasted its retries), a line in log.txt, and an upload: each tried once, as the trial ends anyway."""
    from pah.retry import gave_up

    if isinstance(e, Superseded):  # the trial is another attempt's now: its files are not this one's to write
        print(f"note: {e}", flush=True)
        return
    info = {"type": type(e).__name__, "message": str(e), "tasks_done": _tasks_in(out / "checkpoint")}
    if gave_up(e):
        info["storage"] = gave_up(e)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".error.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out / "error.json")
        with open(out / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} error {type(e).__name__}: {e}\n")
        push(retry=False)
    except OSError:  # the storage that failed the trial: its files reach the bucket at its next start
        pass


def _tasks_in(ckpt_dir: Path) -> int:
    try:
        return int(read_json(ckpt_dir / META)["tasks_completed"])
    except (OSError, ValueError, KeyError):
        return 0


def _take_ray_checkpoint(out: Path) -> None:
    """Copy the trial's newest task checkpoint in storage into the trial dir when it is ahead of what is there.

    On one machine the trial dir already holds the newest state; on a cluster whose nodes share no
    filesystem (or after a move) the copy in storage is the one to resume from. That is Tune's latest
    checkpoint of the trial, or a newer one of its ``checkpoint_NNNNNN`` dirs that Tune's state does not
    know: a driver restored from a snapshot older than the trial's last reports (the head lost, with the
    snapshot taken before them) hands the trial no checkpoint or an old one, though its task checkpoints
    are in the bucket (seen: a trial two tasks in started over from none). A checkpoint after task K is
    the same whichever attempt wrote it (the training is deterministic), so the most tasks wins.
    """
    from ray import tune

    ckpt = tune.get_checkpoint()
    local = out / "checkpoint"

    def take() -> None:
        source = resume_from(ckpt, _newest_stored_checkpoint())
        if source is None:
            return
        with source.as_directory() as d:  # a download, from object storage
            if _whole_tasks_in(Path(d)) > _tasks_in(local):
                tmp = out / "checkpoint.incoming"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(d, tmp)
                shutil.rmtree(local, ignore_errors=True)
                os.replace(tmp, local)

    retrying(take, "storage of the trial's checkpoints", what="reading the trial's checkpoint")


def resume_from(ckpt: Any, stored: tuple[int, Any] | None) -> Any:
    """The checkpoint a trial continues from: Tune's (``ckpt``) or the newest complete one in storage
    (``stored``, see ``newest_checkpoint_in``), whichever holds more tasks; None for neither.

    Tune's is checked as the stored ones are (its ``state.pt`` of the size its ``meta.json`` recorded):
    an attempt cut off while it retried a report can write into the dir Tune recorded. Seen in CI, the
    head lost: Tune's checkpoint held the meta.json of task 4 beside the state of task 3; the trial
    logged ``start tasks_done=4`` and trained task 4 again (that one was the restore's own doing: it
    copied a half-uploaded checkpoint's meta.json over the whole one below, ``pah.storage.
    fill_missing_checkpoints_at`` now writes over nothing)."""
    tasks = _complete_tasks(ckpt.filesystem, ckpt.path) if ckpt is not None else 0
    source = ckpt if tasks else None
    if stored is not None and stored[0] > tasks:
        source = stored[1]
    return source


def _whole_tasks_in(ckpt_dir: Path) -> int:
    """Tasks in a checkpoint dir on this node; 0 if its state.pt is not the size its meta.json recorded."""
    from pyarrow import fs as pafs

    return _complete_tasks(pafs.LocalFileSystem(), str(ckpt_dir))


def _newest_stored_checkpoint() -> tuple[int, Any] | None:
    """(tasks, Checkpoint) of the trial's ``checkpoint_NNNNNN`` dir in Tune's storage holding the most tasks;
    None if it has none. Tune's checkpoint index moves past every such dir, so that the next report adds a
    dir rather than write into one an earlier attempt left."""
    from ray.train._internal.session import get_session

    storage = getattr(get_session(), "storage", None)
    if storage is None:
        return None
    from ray import tune

    fs = storage.storage_filesystem
    best, top = newest_checkpoint_in(fs, storage.trial_fs_path)
    if top >= 0 and storage.current_checkpoint_index <= top:
        storage.current_checkpoint_index = top + 1
    for other in other_dirs_of(fs, storage.trial_fs_path, tune.get_context().get_trial_id()):
        found, _ = newest_checkpoint_in(fs, other)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    return best


def other_dirs_of(fs: Any, trial_path: str, trial_id: str) -> list[str]:
    """The trial's dirs in Tune's storage other than ``trial_path``: named for the same trial (the trainable
    and the trial id) with another ending. Tune names a trial's dir anew on a restore when the snapshot it
    restores from predates the name (``trial_dirname``: sweeps made before it, with the start time in the
    name), and adds a suffix where the name is taken on the driver's node (a driver restarted in the same
    Ray session): the task checkpoints of the trial's earlier attempts are in those."""
    from pyarrow import fs as pafs

    parent, _, name = trial_path.rstrip("/").rpartition("/")
    marker = f"_{trial_id}_"
    if not parent or not trial_id or marker not in name:
        return []
    prefix = name[: name.index(marker) + len(marker)]
    found = []
    for info in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        other = info.path.rstrip("/").rpartition("/")[2]
        if info.type == pafs.FileType.Directory and other.startswith(prefix) and other != name:
            found.append(info.path)
    return sorted(found)


def newest_checkpoint_in(fs: Any, trial_path: str) -> tuple[tuple[int, Any] | None, int]:
    """((tasks, Checkpoint) of the complete ``checkpoint_NNNNNN`` dir under ``trial_path`` holding the most
    tasks, or None), and the highest NNNNNN there (-1: none).

    Complete: its ``state.pt`` is there with the size its ``meta.json`` recorded (``STATE_BYTES``). A node
    lost while Tune uploaded the dir leaves it part-written (seen: meta.json without state.pt; a trial took
    it for two tasks done, found no state and trained from task 1). Tune's own checkpoints are whole (it
    records one only once uploaded); the dirs it never heard of must be checked."""
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    best: tuple[int, Any] | None = None
    top = -1
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith("checkpoint_"):
            continue
        try:
            top = max(top, int(name.split("_", 1)[1]))
        except ValueError:
            continue
        tasks = _complete_tasks(fs, info.path)
        if tasks > 0 and (best is None or tasks > best[0]):
            best = (tasks, Checkpoint(path=info.path, filesystem=fs))
    return best, top


def trial_dirname(trial: Any) -> str:
    """The name of a trial's dir in Tune's storage (``TuneConfig(trial_dirname_creator=...)``): the trial's
    id and tag, as Tune names it, without the start time Tune appends.

    Tune names a trial's dir when the trial first starts, with the time it starts, and records the name in
    its state only at its next snapshot. A trial pending at the last snapshot that reached the bucket,
    started after it and lost with the head, would be named anew on the restore, in a dir beside its
    task checkpoints, and find none (read in Tune's ``Trial.init_local_path``; not seen in a run).
    A name fixed when Tune makes the trial is in every snapshot that holds the trial."""
    name = f"{trial.trainable_name}_{trial.trial_id}_{trial.experiment_tag}"[:100]
    return re.sub(r'[/()<>:"\\|?*\s]', "_", name)


def _complete_tasks(fs: Any, path: str) -> int:
    """Tasks in the checkpoint dir ``path`` on ``fs``; 0 if it is not complete (see ``newest_checkpoint_in``)."""
    from pyarrow import fs as pafs

    try:
        with fs.open_input_stream(f"{path}/{META}") as f:
            meta = json.loads(f.read())
        tasks, size = int(meta["tasks_completed"]), meta.get(STATE_BYTES)
        state = fs.get_file_info(f"{path}/{STATE}")
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if state.type != pafs.FileType.File or not state.size or (size is not None and state.size != size):
        return 0
    return tasks


def _report(metrics: dict[str, Any], checkpoint: Any) -> None:
    """``tune.report``, which uploads the checkpoint; a failed upload leaves Tune's checkpoint index as it
    was, so that a retry writes the same ``checkpoint_NNNNNN`` rather than leave a gap."""
    from ray import tune
    from ray.train._internal.session import get_session

    storage = getattr(get_session(), "storage", None)
    index = getattr(storage, "current_checkpoint_index", None)
    try:
        tune.report(metrics, checkpoint=checkpoint)
    except OSError:
        if index is not None:
            storage.current_checkpoint_index = index
        raise


class Superseded(RuntimeError):
    """This attempt of a trial was taken over by a later one: it must not write the trial's files again."""


class _TrialFiles:
    """Where a trial trains, and how its files reach the sweep.

    On a filesystem the trial trains in the sweep dir itself and has nothing to upload. On object
    storage (pah/storage.py) it trains in a scratch dir of its node, seeded with what earlier starts
    uploaded (log.txt, error.json); its task checkpoints reach the bucket through Tune, and its small
    files after every task (``push``).

    **One writer per trial.** A node cut off from the cluster for longer than Ray's node-death timeout
    is declared dead, and its trials start again elsewhere, while its own processes run on: when the
    link comes back, a partitioned attempt would upload its older log.txt and checkpoint over its
    continuation's (seen: a finished trial's log.txt cut back to 3 of its 5 tasks). So each attempt
    writes its own name to ``trials/PHASE/ID/attempt`` as it starts (``claim``), and reads it back
    before each upload and each report (``fence``): an attempt that finds another name there raises
    ``Superseded`` and writes nothing more. The check and the upload are two requests, not one atomic
    step (object stores offer no compare-and-swap through pyarrow): an upload the old attempt began in
    the moment before the new one claimed the trial still lands, and the new attempt's own upload,
    after its first task, replaces it.
    """

    def __init__(self, sweep_dir: str, phase: str, trial_id: str) -> None:
        import socket
        import uuid

        from pah import storage

        self._storage = storage
        self.remote = storage.join(sweep_dir, "trials", phase, trial_id) if storage.is_uri(sweep_dir) else None
        self.name = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:12]}"
        if self.remote is None:
            self.out = trial_dir(sweep_dir, phase, trial_id)
            return
        self.out = storage.scratch_dir(sweep_dir, phase, trial_id)
        if not self.out.exists():
            storage.download(self.remote, self.out, say=_say_to(None))

    def claim(self) -> None:
        if self.remote is not None:
            self._storage.write_bytes(self._storage.join(self.remote, ATTEMPT), self.name.encode())

    def fence(self) -> None:
        if self.remote is None:
            return
        held = self._storage.read_bytes(self._storage.join(self.remote, ATTEMPT))
        if held is not None and held.decode(errors="replace") != self.name:
            raise Superseded(f"trial files {self.remote} were taken over by a later attempt "
                             f"({held.decode(errors='replace')}); this one ({self.name}) stops writing")

    def push(self, retry: bool = True) -> None:
        if self.remote is None:
            return
        self._storage.upload(self.out, self.remote, files=[f for f in UPLOADED if (self.out / f).exists()],
                             retry=retry, say=_say_to(self.out), before=self.fence)


def _say_to(out: Path | None) -> Callable[[str], None]:
    """Where a trial reports a storage outage while it lasts: its worker's stderr and its log.txt."""
    import sys

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if out is not None:
            try:
                _log(out, line)
            except OSError:  # the disk that is full, maybe
                pass

    return say


def retrying(fn: Callable[[], Any], name: str, *, what: str = "", out: Path | None = None) -> Any:
    from pah.retry import retrying as retry

    return retry(fn, name, what=what, say=_say_to(out))


def storage_scratch(sweep_dir: str) -> bool:
    from pah.storage import is_uri

    return is_uri(sweep_dir)


#: a trial's files that go to object storage, in this order (result.json last)
UPLOADED = ("params.json", "log.txt", "error.json", "result.json")
#: the name of the attempt that owns a trial's files on object storage (``_TrialFiles``)
ATTEMPT = "attempt"


def params_of(config: dict[str, Any], candidates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A trial's config keys: sampled ones (search), or those of confirm candidate ``config["candidate"]``."""
    if "candidate" in config:
        return dict((candidates or [])[config["candidate"]]["params"])
    return {k: v for k, v in config.items() if k != "seed"}


def make_trainable(
    spec_dict: dict[str, Any],
    sweep_dir: str,
    phase: str,
    *,
    cpus: float = 1.0,
    candidates: list[dict[str, Any]] | None = None,
    packers: list[str] | None = None,
) -> Callable[[dict], None]:
    """A function trainable for one phase of the sweep (a closure: Ray pickles it to the workers).
    ``packers``: the names of the packer actors that train the trials (``resources.pack`` > 1)."""

    def pah_trial(config: dict[str, Any]) -> None:
        import torch
        from ray import tune

        from pah.config import config_id
        from pah.trial import NonFiniteLoss, run_trial
        from sweeps.spec import spec_from_dict

        spec = spec_from_dict(spec_dict, name=spec_dict.get("name", "sweep"), check_configs=False)
        params = params_of(config, candidates)
        seed = config.get("seed")
        cfg = spec.trial_config(params, seed)
        if cpus >= 1:
            torch.set_num_threads(int(cpus))

        files = _TrialFiles(sweep_dir, phase, tune.get_context().get_trial_id())
        out, push = files.out, files.push
        err_path = out / "error.json"

        def start() -> int:
            files.claim()  # from here on, an earlier attempt still running somewhere writes nothing more
            out.mkdir(parents=True, exist_ok=True)
            (out / "pid").write_text(f"{os.getpid()}\n")
            atomic_write_json(out / "params.json", {"params": params, "seed": cfg.seed})
            _take_ray_checkpoint(out)
            return _tasks_in(out / "checkpoint")

        # A storage outage (an unreachable bucket, a full disk) is waited out with backoff, reported
        # while it lasts (pah/retry.py), up to PAH_STORAGE_RETRY_S; past that the trial errs, with its error.json.
        try:
            done = retrying(start, f"storage of {out}", what="starting the trial")
            earlier = (out / "log.txt").read_text(errors="replace").splitlines() if (out / "log.txt").exists() else []
            _log(out, f"start tasks_done={done}" + (" (finished already)" if (out / "result.json").exists() else ""))
            push()
        except Exception as e:
            _record_error(out, e, push)
            raise

        # A non-finite loss is deterministic: a retry from the same checkpoint fails the same way.
        if err_path.exists():
            err = read_json(err_path)
            if err.get("type") == "NonFiniteLoss" and err.get("tasks_done") == done:
                _log(out, "error again (same checkpoint): " + err["message"])
                raise NonFiniteLoss(err["message"])
        failed, how = failed_attempts(earlier, time.time())
        if failed:  # a fault that may pass (a node, memory, storage past its own retries): not again at once
            wait = restart_delay(failed)
            _log(out, f"attempt after {failed} failed in a row (the last: {how[:200]}): waiting {wait:.0f} s first")
            time.sleep(wait)

        def on_task_end(r) -> None:
            atomic_write_json(r.checkpoint_dir / META, {"tasks_completed": r.task + 1,
                                                        STATE_BYTES: (r.checkpoint_dir / STATE).stat().st_size})
            _log(out, f"trained task {r.task + 1}/{r.num_tasks}")
            push()
            if r.task + 1 < r.num_tasks:  # the last task is reported once result.json exists (below)
                # Tune uploads the checkpoint to the sweep's storage here: retried while it is unreachable
                def report() -> None:
                    files.fence()  # Tune uploads the checkpoint: not over a later attempt's
                    _report(_metrics(r.metrics, r.val_metrics, r.task + 1, r.num_tasks, r.train_seconds),
                            checkpoint=tune.Checkpoint.from_directory(str(r.checkpoint_dir)))

                retrying(report, f"storage {sweep_dir}", what=f"saving the checkpoint of task {r.task + 1}", out=out)

        def _metrics(m, vm, done: int, total: int, seconds: float) -> dict[str, Any]:
            return {
                **metrics_of_result(m, vm),
                "tasks_completed": done,
                "num_tasks": total,
                "train_seconds": seconds,
                "seed": cfg.seed,
                "config_id": cid,
            }

        cid = config_id(cfg)
        try:
            if packers:
                from sweeps.packing import run_in_packer

                result = run_in_packer(packers, tune.get_context().get_trial_id(), cfg, out, on_task_end)
            else:
                result = run_trial(cfg, out, device="auto", on_task_end=on_task_end, progress=False)
            _log(out, "finished")
            push()  # result.json last: a reader that sees it sees the trial's other files too
        except Exception as e:
            _record_error(out, e, push)
            raise
        if storage_scratch(sweep_dir):
            shutil.rmtree(out, ignore_errors=True)  # all of it is in the bucket now; the node keeps nothing
        # Reported only now: a scheduler may stop the trial at its last report (ASHA at max_t),
        # and the trial must not be stopped before result.json is written.
        T = len(result["acc_matrix"])
        tune.report(_metrics(result["metrics"], result.get("val_metrics"), T, T, result["timing"]["train_seconds"]))

    return pah_trial
