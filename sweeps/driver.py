"""The sweep driver: search (phase 1), then confirm the top-K configs over seeds (phase 2).

``run_sweep`` is what ``pah sweep`` runs and what the SLURM / Ray Jobs launchers call on
every (re)start. It is idempotent on its sweep directory:

    SWEEP/sweep.json              spec, phase flags and experiment paths (atomic writes)
    SWEEP/spec.yaml               the resolved spec, for people
    SWEEP/optuna.db               the search phase's Optuna study (SQLite): every trial that ended, as it
                                  ends (watch it with `optuna-dashboard sqlite:///SWEEP/optuna.db`)
    SWEEP/tune/search/            Ray Tune's experiment dir of phase 1 (Tuner.restore reads it;
                                  .pah-snapshot/ keeps the last complete copy of its state)
    SWEEP/tune/confirm/           ... of phase 2
    SWEEP/trials/search/ID/       one trial: result.json, checkpoint/, params.json, log.txt; stopped.json
                                  if the scheduler ended it early, error.json if it raised
    SWEEP/trials/confirm/ID/
    SWEEP/wandb/                  offline W&B runs (sync with `wandb sync SWEEP/wandb/offline-run-*`)
    SWEEP/report.html             the self-contained report, written when the sweep ends

With ``storage="s3://BUCKET/PREFIX"`` (any pyarrow URI) the same layout lives under the prefix and
``sweep_dir`` is the driver's local staging copy of it (see pah/storage.py and docs/storage.md).

The base config (the spec's preset plus ``set``) is a candidate like any other: it is the
search phase's first trial (its values for the searched keys that lie in the space), and the
confirm phase runs it over the confirm seeds next to the top-K, so that the final table says
how the best config compares with not sweeping at all (difference and Welch p).

A phase that finished is never run again; an interrupted one is restored with
``Tuner.restore(resume_unfinished=True, resume_errored=True)``: finished trials are kept,
unfinished and errored ones continue from their last task checkpoint. A phase is done only
when every trial it owes (``_owed``: the search's samples or grid, the confirm jobs) ended
for a reason: finished, stopped by the scheduler, or errored past ``max_failures``;
``Tuner.fit()`` also returns after an interrupt (sweeps/interrupts.py: the first SIGINT or
SIGTERM stops the sweep gracefully, a second at once; exit 130 or 143 with the resume
command).

Errored trials make the sweep exit 1 (``pah.errors.Failed``), and are of two kinds:
``OWN_ERRORS``, the trial's own, which a retry from the same checkpoint repeats (a non-finite
loss, ``pah.trial.NonFiniteLoss``; a bad config, ``pah.errors.UserError``): ``--resume``
leaves them errored. Every other error is the machine's (a worker killed or out of memory,
a node lost, storage unreachable or full past its retries): ``--resume`` reopens the phase
and Tune retries those trials from their last task checkpoint, with a fresh ``max_failures``.
Every errored trial has its ``error.json`` (the trainable's, else the driver's, from Ray's).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pah import signals
from pah import storage as storage_mod
from pah.errors import Failed, Interrupted, UserError, say
from pah.io import atomic_write_bytes, atomic_write_json, read_json
from pah.lock import LOCK_FILE
from pah.storage import is_uri, remote_of
from sweeps.interrupts import Interrupts
from sweeps.phases import (  # noqa: F401  (re-exported: tests and callers use these names here)
    DEFAULT_STORAGE,
    PHASES,
    REPORT,
    STATE,
    _param_space,
    _phase_results,
    _value,
    confirm_jobs,
    select_candidates,
)
from sweeps.spec import Spec, load_spec, spec_from_dict

if TYPE_CHECKING:
    from analysis.sweep_report import SweepReport

__all__ = ["run_sweep", "DEFAULT_STORAGE", "STATE", "REPORT", "select_candidates", "read_results", "summary_table",
           "write_report", "confirm_jobs"]



def run_sweep(
    spec: str | Path | Spec | None = None,
    *,
    overrides: Sequence[str] = (),
    storage: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    resume: str | Path | None = None,
    progress: bool | str = True,
) -> Path:
    """Run (or continue) a sweep; returns its directory.

    One driver per sweep (sweeps/owner.py): the sweep dir's lock, or a bucket's lease, is taken before
    anything is read or written, and released however this returns; a second driver gets
    ``pah.lock.Held`` (exit 2) naming the holder. The rest is ``_run_sweep``'s.
    """
    from sweeps.owner import sweep_owner

    spec, overrides, name, owner = sweep_owner(spec, overrides, storage, name, resume)
    with owner:
        return _run_sweep(spec, overrides=overrides, storage=storage, name=name, address=address, resume=resume,
                          progress=progress)


def _run_sweep(
    spec: str | Path | Spec | None = None,
    *,
    overrides: Sequence[str] = (),
    storage: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    resume: str | Path | None = None,
    progress: bool | str = True,
) -> Path:
    """Run (or continue) a sweep; returns its directory.

    ``spec``: a shipped spec name, a YAML path or a :class:`Spec` (default ``quickstart``).
    ``storage``/``name``: the sweep dir is ``storage/name`` (default ``runs/sweeps`` and
    ``SPEC-YYYYmmdd-HHMMSS``); if it already holds a sweep, that sweep is resumed with its
    saved spec. ``resume``: a sweep dir to continue. ``address``: an existing Ray cluster
    (default: $RAY_ADDRESS, as set by Ray Jobs); None starts a private local one, unless
    this process has initialised Ray already, which is then used as it is. ``progress``: False
    for no live lines, else True or a verbosity of :class:`sweeps.progress.ConciseProgress`
    ("auto", "trials", "summary"; set when a phase starts, kept by a resumed one).
    """
    sweep_dir, spec_obj, state = _open(spec, overrides, storage, name, resume)
    remote = remote_of(sweep_dir)  # a URI: sweep_dir is the driver's staging copy (pah/storage.py)
    print(f"sweep: {remote or sweep_dir}", flush=True)
    if remote is None:
        _check_storage(sweep_dir)
    if state["phases"]["search"].get("started"):
        done = [p for p in PHASES if state["phases"][p]["done"]]
        print(f"resuming {spec_obj.name} ({', '.join(done) if done else 'no phase'} done)", flush=True)

    resume_cmd = f"pah sweep --resume {shlex.quote(str(remote or sweep_dir))}"
    _reopen_errored(sweep_dir, spec_obj, state)
    phases = state["phases"]
    if phases["search"]["done"] and (phases["confirm"]["done"] or not spec_obj.confirm.top_k):
        report = read_results(sweep_dir)  # finished already: no Ray needed
        print(summary_table(report), flush=True)
        if not (sweep_dir / REPORT).exists():
            write_report(sweep_dir, report)
        _check_errored(sweep_dir, resume_cmd, report)
        return sweep_dir
    if "base" not in state:
        from sweeps.search import base_point

        state["base"] = None if spec_obj.methods else base_point(spec_obj)  # a study: one per method (sweeps/study.py)
        _save(sweep_dir, state)
    # SIGINT/SIGTERM: the first stops the phase gracefully, a second at once (sweeps/interrupts.py)
    interrupts = Interrupts(resume_cmd)
    with _aborts(interrupts), interrupts, _ray(address, spec_obj), _said_first(interrupts):
        interrupts.install()  # ray.init sets a SIGTERM handler of its own
        if remote:
            _storage_on_every_node(remote)
        if not state["phases"]["search"]["done"]:
            _run_phase(sweep_dir, spec_obj, state, "search", progress, interrupts)
        interrupts.check()
        if spec_obj.confirm.top_k:
            if "candidates" not in state["phases"]["confirm"]:
                if spec_obj.methods:  # a study: each method's top K and its default config
                    from sweeps.study import study_candidates

                    state["phases"]["confirm"]["candidates"] = study_candidates(sweep_dir, spec_obj)
                else:
                    state["phases"]["confirm"]["candidates"] = select_candidates(sweep_dir, spec_obj, base=state["base"])
                _save(sweep_dir, state)
            if not state["phases"]["confirm"]["done"]:
                _run_phase(sweep_dir, spec_obj, state, "confirm", progress, interrupts)
        reporting = _report_meanwhile(sweep_dir)  # the results read and report.html drawn while Ray shuts down

    report, path = reporting()
    print(summary_table(report), flush=True)
    if path is not None:
        print(_report_line(sweep_dir, path), flush=True)
    _check_errored(sweep_dir, resume_cmd, report)
    return sweep_dir


def _report_meanwhile(sweep_dir: Path) -> Callable[[], tuple[SweepReport | None, Path | None]]:
    """Read the results and write report.html in a thread, started as the phases end; returns what waits for it.

    Ray's shutdown (its actors' deaths awaited, its processes stopped: 2-3 s of waiting) and the report
    (loading the results, then matplotlib: ~5 s of one core) overlap instead of following each other: a
    part of every sweep's fixed cost (bench/RESULTS.md, orchestration). The thread is a daemon: a signal
    that ends the driver meanwhile does not wait for the figures (``pah analyze SWEEP --html`` draws them).
    """
    box: dict[str, Any] = {}

    def work() -> None:
        box["report"] = read_results(sweep_dir)
        box["path"] = write_report(sweep_dir, box["report"], say=False)

    thread = threading.Thread(target=work, name="pah-report", daemon=True)
    thread.start()

    def wait() -> tuple[SweepReport | None, Path | None]:
        thread.join()
        return box.get("report"), box.get("path")

    return wait


@contextlib.contextmanager
def _aborts(interrupts: Interrupts) -> Iterator[None]:
    """A second signal's KeyboardInterrupt (or what Ray made of it) ends the sweep as ``Interrupted``."""
    try:
        yield
    except Interrupted:
        raise
    except BaseException:
        if interrupts.aborted:
            raise interrupts.abort_error() from None
        raise


#: seconds the other nodes have to answer the storage check before the sweep goes on without their answers
NODE_CHECK_S = 60.0


def _storage_on_every_node(uri: str, timeout: float = NODE_CHECK_S) -> None:
    """``--storage URI`` checked from every other Ray node with CPUs, as this process checked it before Ray.

    On a cluster without a shared filesystem each trial reads and writes the bucket from its own node, with
    that node's credentials and network (an instance role, a VPC endpoint). A node that cannot use it would
    fail every trial placed on it, one storage timeout each, and use up their ``max_failures``. Instead a
    ``UserError`` (exit 2) names the node and the cause before any trial starts: a zero-CPU Ray task pinned
    to each node runs ``pah.storage.check`` there (a probe object written and deleted).

    Only a node's own answer fails the sweep. A node that dies or is declared dead meanwhile (a node lost
    just before the sweep, still listed) is a fault like any node lost later, and one that does not answer
    within ``timeout`` (busy, or going away) is a note: the sweep goes on, its tasks cancelled.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()
             if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0 and n["NodeID"] != here}
    if not nodes:
        return
    # max_calls=1: the worker process that ran the check ends with it, and never becomes a trial's (with the
    # check's S3 client still in it; the joining-node test hung twice in four runs of an earlier form of this)
    check = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(_check_here)
    refs = {check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(uri): node
            for node in nodes}
    done, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    for ref in late:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    for ref in done:
        try:
            why = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the node died, or the task could not run there: not its answer
            print(f"note: the Ray node {nodes[refs[ref]]} did not check --storage ({type(e).__name__}); going on",
                  file=sys.stderr, flush=True)
            continue
        if why:
            cause = why.split(": ", 1)[1] if why.startswith(f"--storage {uri}: ") else why
            raise UserError(f"--storage {uri} is not usable from the Ray node {nodes[refs[ref]]}: {cause}; "
                            "give every node the same access to it (credentials, endpoint, network)")
    if late:
        print(f"note: {len(late)} Ray node(s) did not answer the storage check within {timeout:.0f} s "
              f"({', '.join(nodes[refs[r]] for r in late)}); going on", file=sys.stderr, flush=True)


def _check_here(uri: str) -> str | None:
    """On a Ray node: why ``uri`` is not usable from it (``pah.storage.check``'s message), or None."""
    import socket

    from pah import storage

    try:  # a probe of its own: the nodes check at the same time
        storage.check(uri, probe=f".pah-write-test-{socket.gethostname()}-{os.getpid()}")
    except UserError as e:
        return str(e)
    return None


@contextlib.contextmanager
def _said_first(interrupts: Interrupts) -> Iterator[None]:
    """The sweep's ``error:`` line said while Ray still runs, before ``_ray`` shuts it down.

    ``ray.shutdown()`` can end this process on the spot: Ray 2.60's core worker exits when the raylet
    closes their connection during the disconnect it sends ("Exiting because the Raylet IPC connection
    failed and the local Raylet is dead", seen in a driver's core log under load after a SIGTERM).
    The line naming the resume command must not be lost with it; the CLI does not say it again.
    """
    try:
        with _aborts(interrupts):  # a second signal's KeyboardInterrupt is an Interrupted here already
            yield
    except (Interrupted, Failed, UserError) as e:
        say(e)
        raise


def read_results(sweep_dir: Path) -> SweepReport | None:
    """The sweep's results read once, for its table and its report (analysis.sweep_report: load ->
    aggregate -> compare); None, with a note, if that fails (the results are on disk either way)."""
    from analysis.sweep_report import sweep_report

    try:
        return sweep_report(sweep_dir)
    except Exception as e:  # `pah analyze SWEEP` reads them again
        print(f"note: could not read the results of {sweep_dir} ({type(e).__name__}: {e}); "
              f"pah analyze {sweep_dir} reads them", file=sys.stderr, flush=True)
        return None


def summary_table(report: SweepReport | None) -> str:
    """What the sweep prints at its end: the seed-averaged table of the confirmed configs (all configs
    when there is no confirm phase) with the trial states and the best config against the base config
    under it, or a study's table (analysis.sweep_report)."""
    if report is None:
        return ""
    try:
        return report.text()
    except Exception as e:  # a report that fails to render never fails the sweep
        print(f"note: the table failed ({type(e).__name__}: {e}); pah analyze {report.info.dir} prints it",
              file=sys.stderr, flush=True)
        return ""


def write_report(sweep_dir: Path, report: SweepReport | None = None, *, say: bool = True) -> Path | None:
    """SWEEP/report.html (see analysis.html), from the results read once (``report``, else read here);
    a failure is a note, never a failed sweep. ``say``: print the ``report:`` line (``_report_line``)."""
    try:
        from analysis.html import write_html
        from analysis.study_table import STUDY_DIR, write_study_files

        report = report if report is not None else read_results(sweep_dir)
        if report is not None and report.study is not None:  # a study's table as markdown, LaTeX, CSV and JSON
            write_study_files(sweep_dir, table=report.study)
            _push(sweep_dir, STUDY_DIR)
        if report is None or report.results is None:
            path = write_html([sweep_dir], sweep_dir / REPORT)  # reads them, or says why it cannot
        else:
            path = write_html([sweep_dir], sweep_dir / REPORT, results=report.results, summary=report.summary(),
                              reports=[report])
        _push(sweep_dir, REPORT)
    except Exception as e:  # the results are on disk either way; `pah analyze SWEEP --html` retries
        print(f"note: could not write {sweep_dir / REPORT} ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None
    if say:
        print(_report_line(sweep_dir, path), flush=True)
    return path


def _report_line(sweep_dir: Path, path: Path) -> str:
    """``report: PATH``, the bucket's URI for a sweep on object storage."""
    remote = remote_of(sweep_dir)
    return f"report: {storage_mod.join(remote, REPORT) if remote else path}"


# --------------------------------------------------------------------------- sweep dir and state


def _open(spec, overrides, storage, name, resume) -> tuple[Path, Spec, dict[str, Any]]:
    if resume is not None and is_uri(resume):
        if overrides:
            raise UserError("--set: cannot change the spec of a sweep being resumed")
        return _open_remote(str(resume), None)
    if resume is not None:
        sweep_dir = Path(resume).absolute()
        if not (sweep_dir / STATE).is_file():
            raise UserError(f"--resume {resume}: not a sweep directory (no {STATE})")
        if overrides:
            raise UserError("--set: cannot change the spec of a sweep being resumed")
        return _load_state(sweep_dir)
    if isinstance(spec, Spec) and overrides:
        raise UserError("overrides: apply them when loading the spec (load_spec(name, overrides)), not to a Spec")
    spec_obj = spec if isinstance(spec, Spec) else load_spec(spec or "quickstart", list(overrides))
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise UserError(f"--name {name!r}: expected a plain directory name")
    name = name or f"{spec_obj.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if is_uri(storage):  # checked before Path() folds its "//"
        return _open_remote(storage_mod.join(str(storage), name), spec_obj)
    parent = Path(storage) if storage is not None else DEFAULT_STORAGE
    sweep_dir = (parent / name).absolute()
    if (sweep_dir / STATE).is_file():  # a requeued job calls us again: continue that sweep
        loaded = _load_state(sweep_dir)
        if loaded[2]["spec"] != spec_obj.to_dict():
            print(f"note: {sweep_dir} holds a sweep of another spec; continuing it with its saved spec",
                  file=sys.stderr, flush=True)
        return loaded
    if sweep_dir.exists() and any(p.name != LOCK_FILE for p in sweep_dir.iterdir()):  # our own lock aside
        raise UserError(f"sweep dir {sweep_dir} exists and is not a sweep; choose another --name or --storage")
    return _new_sweep(sweep_dir, spec_obj, str(sweep_dir / "tune"))


def _new_sweep(sweep_dir: Path, spec_obj: Spec, tune_root: str) -> tuple[Path, Spec, dict[str, Any]]:
    state = {
        "schema": 1,
        "spec": spec_obj.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "phases": {p: {"done": False, "path": f"{tune_root}/{p}"} for p in PHASES},
    }
    _save(sweep_dir, state)
    atomic_write_bytes(sweep_dir / "spec.yaml", yaml.safe_dump(spec_obj.to_dict(), sort_keys=False).encode())
    _push(sweep_dir, "spec.yaml")
    return sweep_dir, spec_obj, state


def _open_remote(uri: str, spec_obj: Spec | None) -> tuple[Path, Spec, dict[str, Any]]:
    """A sweep under a URI: check access (before anything starts), then stage its files locally
    (all but Tune's dir and the checkpoints): the state, the trials' small files, optuna.db, wandb/."""
    option = "--storage" if spec_obj is not None else "--resume"
    storage_mod.check(uri, option)
    local = storage_mod.staging_dir(uri)
    shutil.rmtree(local, ignore_errors=True)  # the bucket holds the truth
    storage_mod.mark_staging(local, uri)
    storage_mod.download(uri, local)
    if (local / STATE).is_file():  # a resume, or a requeued job calling us again
        loaded = _load_state(local)  # staged elsewhere ($TMPDIR) before: its paths are made this copy's
        if spec_obj is not None and loaded[2]["spec"] != spec_obj.to_dict():
            print(f"note: {uri} holds a sweep of another spec; continuing it with its saved spec",
                  file=sys.stderr, flush=True)
        return loaded
    if spec_obj is None:
        raise UserError(f"--resume {uri}: not a sweep (no {STATE} there)")
    if len([p for p in local.iterdir() if p.name != storage_mod.MARKER]):
        raise UserError(f"sweep dir {uri} exists and is not a sweep; choose another --name or --storage")
    return _new_sweep(local, spec_obj, storage_mod.join(uri, "tune"))


def _load_state(sweep_dir: Path) -> tuple[Path, Spec, dict[str, Any]]:
    state = read_json(sweep_dir / STATE)
    spec_obj = spec_from_dict(dict(state["spec"]), name=state["spec"].get("name", "sweep"), check_configs=False)
    # The paths it holds are where the sweep was when they were written: a sweep moved, copied or synced
    # elsewhere (or staged from a bucket into another $TMPDIR) works where it is now.
    for c in state["phases"]["confirm"].get("candidates") or []:
        if c.get("dir"):
            c["dir"] = str(sweep_dir / "trials" / "search" / Path(c["dir"]).name)
    for phase, info in state["phases"].items():
        if info.get("path") and not is_uri(info["path"]):
            info["path"] = str(sweep_dir / "tune" / phase)
    return sweep_dir, spec_obj, state


def _save(sweep_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(sweep_dir / STATE, state)
    _push(sweep_dir, STATE)


def _push(sweep_dir: Path, *files: str) -> None:
    """Upload these files (paths relative to the sweep dir; folders: every file in them) of a staged sweep."""
    remote = remote_of(sweep_dir)
    if remote is None:
        return
    for rel in files:
        if (sweep_dir / rel).exists():
            storage_mod.upload(sweep_dir / rel, storage_mod.join(remote, rel))


def _check_storage(sweep_dir: Path) -> None:
    probe = sweep_dir / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--storage: cannot write in {sweep_dir} ({e.strerror})") from None


# --------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def _ray(address: str | None, spec: Spec) -> Iterator[None]:
    """Use Ray if this process already runs it; else join ``address``; else start a private local Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, our lines only
    # Tune's own per-trial loggers would write a second kind of result.json inside the sweep dir,
    # which `pah analyze SWEEP` must not mistake for a trial's; the trial dirs hold the real ones.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune snapshots the experiment at most every 10 s by default: a driver killed in that window
    # forgets the trials started since, and a restore samples new ones in their place (their dirs
    # stay behind as unfinished). Our experiment state is small: snapshot every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Ray's raylet starts its workers (our trials, W&B's loggers) at nice 15 by default, so any
    # normal-priority work on the machine starves them (a 20 s trial took 6 min with one busy
    # process per core). The trials are the work the user asked for: they run at the user's own
    # priority (`nice -n 10 pah sweep ...` for a background sweep). RAY_worker_niceness, when set,
    # is kept. A cluster we join (--address, Ray Jobs) keeps the niceness its raylets started with.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import logging

    import ray

    warnings.filterwarnings("ignore", message="The reported value is ignored")  # Optuna, on a restored trial
    with contextlib.suppress(ImportError):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    for noisy in ("ray.tune.analysis.experiment_analysis", "ray.tune.utils.util", "ray.tune.search.sample",
                  "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # a failed trial's traceback goes to its error file; our progress line names it and the reason
    for noisy in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    # Ray Jobs runs its entrypoint with RAY_ADDRESS set to its own cluster: join that one
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # A new cluster of our own (never "auto": a shared machine may run someone else's), with
        # its own short temp dir (unix socket paths are limited to ~107 bytes) and no dashboard.
        # Ray 2.60 resolves 127.0.0.1 to the node's routable IP and its servers listen on every
        # interface; what guards them is Ray's token authentication, on by default since 2.5x.
        temp_dir = tempfile.mkdtemp(prefix="pahray-", dir="/tmp")
        cpus = max(os.cpu_count() or 1, math.ceil(spec.resources.cpus))
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            log_to_driver=False,
            logging_level="warning",
            configure_logging=True,
        )
    else:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    ended: BaseException | None = None
    try:
        yield
    except BaseException as e:
        ended = e
        raise
    finally:
        said = bool(getattr(ended, "said", False))
        _actors_ended()
        # stopped by a signal, its line said: the process ends with 128 + N, and Ray with it (``_left_to_exit``)
        if not (said and isinstance(ended, Interrupted) and _left_to_exit(temp_dir)):
            # once the sweep's error: line is out (``_said_first``), it stays the last line: what Ray's core
            # worker logs while it disconnects ("Failed to push error to driver ...") goes nowhere
            with _silenced() if said else contextlib.nullcontext(), signals.kept(), _no_collection():
                ray.shutdown()  # (SIGTERM still ours after it: signals.kept)
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Around ``ray.shutdown()``: the cyclic garbage collector collects first, then not until it returns.

    The report is read and drawn in a thread meanwhile (``_report_meanwhile``). A Ray handle freed by the
    collector calls into the core worker (``ActorHandle.__del__`` checks ``worker.connected``, still true
    while the core worker shuts down), and such a call in that window ends the process with exit 1: "The
    core worker has already been shutdown ... The process will exit" (CI, once, a packed sweep whose
    packer actors' handles were garbage by then). Once ``ray.shutdown()`` returns, ``connected`` is false
    and a collection is harmless again."""
    import gc

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _left_to_exit(temp_dir: str | None) -> bool:
    """A sweep stopped by a signal, in a process the CLI owns: Ray's teardown is left to the process's end
    (``pah.signals.end_at_exit``), so that its exit code is the signal's 128 + N.

    ``ray.shutdown()`` can end this process on the spot with exit code 1 (Ray 2.60's core worker,
    "Exiting because the Raylet IPC connection failed", while the trial actors Tune just stopped are
    still dying: seen in CI after a SIGTERM, though ``_actors_ended`` waits for them). Without it, the
    kernel ends the private Ray's raylet and GCS with this process (Ray starts them sharing its fate);
    a reaper then ends what they leave (Ray's agents, which would notice within minutes) and removes
    ``temp_dir``. A cluster that was joined sees its driver gone, as it would after ``ray.shutdown()``.
    """
    reaper = None
    if temp_dir is not None:
        try:
            import psutil  # Ray's own dependency

            pids = " ".join(str(p.pid) for p in psutil.Process().children(recursive=True))
        except Exception:  # noqa: BLE001 - none known: the kernel and Ray's agents' own checks end them
            pids = ""
        reaper = (f"kill -9 {pids} 2>/dev/null; " if pids else "") + f"rm -rf {shlex.quote(temp_dir)}"
    return signals.end_at_exit(reaper)


def _actors_ended(timeout: float = 15.0) -> None:
    """Before ``ray.shutdown()``: wait (at most ``timeout``) until no actor of this driver's job is alive.

    Tune returns from ``fit()`` while the trial and logging actors it stopped are still going away,
    most of all after an interrupt. If ``ray.shutdown()`` disconnects from the raylet while their
    deaths are being processed, Ray's core worker writes to the closed connection and ends this
    process at once with exit code 1 ("Exiting because the Raylet IPC connection failed"), instead
    of the sweep's own 130 or 143 (seen under load, 1 run in 20).
    """
    import ray

    try:
        from ray._private import state  # Ray's GCS actor table (no public API without the dashboard)

        job = ray.get_runtime_context().get_job_id()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(a.get("JobID") == job and a.get("State") != "DEAD" for a in state.actors().values()):
                break
            time.sleep(0.2)
        time.sleep(0.5)  # their deaths reach this process's core worker
    except Exception:  # noqa: BLE001 - the GCS already gone, or its table not readable: shut down as it is
        return


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """This process's stdout and stderr (the file descriptors: C++ logs too) sent to /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


# --------------------------------------------------------------------------- phases


def _searcher(spec: Spec, seed: int, point: dict[str, Any] | None, mirror: Path | None = None):
    """Optuna (TPE, multi-objective) or Tune's BasicVariantGenerator, asking for ``point`` (the base) first."""
    if spec.searcher == "grid":
        return None  # the grid's own points; the base config enters through the confirm phase
    if spec.methods:  # a study: one Optuna study per method, their trials handed out in turn
        from sweeps.multisearch import MethodsSearch

        return MethodsSearch.for_spec(spec, seed, mirror)
    if spec.searcher == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=[dict(point)] if point else None, max_concurrent=spec.max_concurrent)
    import optuna

    from sweeps.search import SequenceOptunaSearch

    # The study lives in memory and is pickled with Tune's own experiment snapshots, so a
    # restored searcher always agrees with the restored trials. (An RDB storage runs ahead
    # of the snapshot: after a driver crash Tune re-runs a trial that the database already
    # holds as finished, and Optuna refuses the report.) SWEEP/optuna.db is a copy: every trial
    # that ends is appended to it from a background thread (sweeps.search.StudyMirror), and
    # _export_study adds any it lacks when the search phase ends.
    multi = spec.searcher == "optuna-multi"
    return SequenceOptunaSearch(
        metric=list(spec.metrics) if multi else spec.metrics[0],
        mode=list(spec.modes) if multi else spec.modes[0],
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
        study_name=spec.name,
        base_point=point,
        mirror=mirror,
    )  # TuneConfig.max_concurrent_trials wraps it in a ConcurrencyLimiter


def _export_study(sweep_dir: Path) -> None:
    """Complete SWEEP/optuna.db from Tune's last searcher snapshot: the trials the live copy lacks."""
    states = sorted((sweep_dir / "tune" / "search").glob("searcher-state-*.pkl"))  # named by session start
    if not states:
        return
    try:
        from ray.tune.search.optuna import OptunaSearch

        from sweeps.search import SequenceOptunaSearch, mirror_for, tune_ids

        searcher = OptunaSearch()
        searcher.restore(str(states[-1]))
        if hasattr(searcher, "searchers"):  # a study's (sweeps.multisearch.MethodsSearch): one study per method
            from sweeps.multisearch import export_studies

            export_studies(searcher.searchers, sweep_dir)
            return
        while not hasattr(searcher, "_ot_study") and hasattr(searcher, "searcher"):  # a ConcurrencyLimiter
            searcher = searcher.searcher
        study = searcher._ot_study
        if getattr(searcher, "mirror", None):  # restore() fills a plain OptunaSearch with the saved attributes
            mirror = SequenceOptunaSearch.study_mirror(searcher)
            mirror.flush()  # the live copy's queue first, then what it lacks (nothing, unless it failed)
        else:  # a sweep started before the live copy: its optuna.db, if any, was written whole at the end
            (sweep_dir / "optuna.db").unlink(missing_ok=True)
            metric = searcher._metric if isinstance(searcher._metric, list) else [searcher._metric]
            mirror = mirror_for(sweep_dir / "optuna.db", study.study_name,
                                [d.name.lower() for d in study.directions], [str(m) for m in metric])
        mirror.sync(study, tune_ids(searcher))
    except Exception as e:  # the sweep's results do not depend on this copy
        print(f"note: could not write {sweep_dir / 'optuna.db'} ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def _scheduler(spec: Spec, num_tasks: int):
    if spec.scheduler.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    def asha() -> ASHAScheduler:  # ASHA takes one metric: the first one of a multi-objective spec
        return ASHAScheduler(
            time_attr="tasks_completed",
            metric=spec.metrics[0],
            mode=spec.modes[0],
            max_t=num_tasks,
            grace_period=min(spec.scheduler.grace_period, num_tasks),
            reduction_factor=spec.scheduler.reduction_factor,
        )

    if spec.methods:  # a study: a method's trials are ranked among its own only (sweeps/multisearch.py)
        from sweeps.multisearch import PerMethodScheduler

        return PerMethodScheduler(asha, metric=spec.metrics[0], mode=spec.modes[0])
    return asha()


def _wandb_env(spec: Spec) -> str:
    """Resolve the W&B mode (spec, then $WANDB_MODE, then offline) and put it in the environment:
    Ray's callback reads it there, on a fresh start and on a restore alike."""
    mode = spec.wandb.mode or os.environ.get("WANDB_MODE") or "offline"
    if spec.wandb.enabled and mode != "disabled":
        os.environ["WANDB_MODE"] = mode
        if mode != "online":
            os.environ.pop("WANDB_API_KEY", None)  # offline needs no key: keep it out of Ray's runtime env
    return mode


def _wandb_callback(spec: Spec, sweep_dir: Path, candidates: list[dict[str, Any]] | None) -> list[Any]:
    mode = _wandb_env(spec)
    if not spec.wandb.enabled or mode == "disabled":
        return []
    try:
        from sweeps.wandb_runs import FeedingWandbCallback, complete_ended_runs, wait_for_runs
    except ImportError as e:  # wandb missing: the sweep runs without it
        print(f"note: W&B logging skipped ({e})", file=sys.stderr, flush=True)
        return []

    class GroupedWandb(FeedingWandbCallback):
        """W&B runs grouped by config_id, so the seeds of one config share a group, and tagged with
        their method (a study compares methods: W&B's "group by" on config.method, or the tag, puts
        each method's configs together); complete when the phase ends (sweeps/wandb_runs.py: a
        restored trial's run replays its earlier one)."""

        def log_trial_start(self, trial):
            from pah.config import config_id
            from sweeps.trainable import params_of

            params = params_of(trial.config, candidates)
            cfg = spec.trial_config(params, trial.config.get("seed"))
            self.group = config_id(cfg)
            # the run's config says what the trial trained: its method, searched values, config_id and
            # seed (a confirm trial's Tune config holds only a candidate index and a seed)
            self.kwargs["config"] = {**{k: v for k, v in trial.config.items() if k not in self.excludes}, **params,
                                     "method": cfg.method.name, "config_id": self.group, "seed": cfg.seed}
            self.kwargs["tags"] = [cfg.method.name]
            super().log_trial_start(trial)

        def on_experiment_end(self, trials, **info):
            complete_ended_runs(self, trials, sweep_dir)  # ended before a killed driver, run cut short
            wait_for_runs(self)

    (sweep_dir / "wandb").mkdir(exist_ok=True)
    return [GroupedWandb(
        project=spec.wandb.project or os.environ.get("WANDB_PROJECT") or "pah",
        mode=mode,
        dir=str(sweep_dir),
        job_type=spec.name,
        excludes=["config_id", "seed", "method"],
    )]


def _run_phase(sweep_dir: Path, spec: Spec, state: dict[str, Any], phase: str, progress: bool | str,
               interrupts: Interrupts | None = None) -> None:
    from ray import tune

    from sweeps.packing import packer_names, start_packers, stop_packers
    from sweeps.progress import ConciseProgress
    from sweeps.snapshot import (
        SnapshotGuard,
        SyncFailures,
        fill_missing_checkpoints,
        new_trials_where_restored,
        pace_tune_snapshots,
        repair,
        restored_trials_keep_their_json,
        saves_wait_for_room,
    )
    from sweeps.trainable import make_trainable, trial_dirname

    base_cfg = spec.trial_config()
    exp_path = sweep_dir / "tune" / phase
    remote = remote_of(sweep_dir)  # object storage: Tune and the trials write there directly
    # Tune's snapshots stay a small share of the driver's time at 1,000 trials. On object storage a
    # trial's own directory is scratch on its node, so there Tune's snapshot must name each newest
    # checkpoint as soon as it is reported: a snapshot after every checkpoint, as Ray does.
    pace_tune_snapshots(force_on_checkpoint=bool(remote))
    saves_wait_for_room()
    tune_root = storage_mod.join(remote, "tune") if remote else str(sweep_dir / "tune")
    candidates = state["phases"]["confirm"].get("candidates") if phase == "confirm" else None
    pack = spec.resources.pack
    packers = packer_names(sweep_dir, phase, math.ceil(spec.max_concurrent / pack)) if pack > 1 else None
    trainable = tune.with_resources(
        make_trainable(spec.to_dict(), remote or str(sweep_dir), phase, cpus=spec.resources.cpus, candidates=candidates,
                       packers=packers),
        {"cpu": spec.resources.cpus, "gpu": 0 if packers else spec.resources.gpus},  # packers hold the GPUs
    )
    if phase == "confirm" and not (candidates and confirm_jobs(spec, state)):
        if not candidates:
            print("[confirm] no search trial finished its task sequence: nothing to confirm", flush=True)
        state["phases"][phase]["done"] = True
        _save(sweep_dir, state)
        return

    t0 = time.monotonic()
    fixed = repair(exp_path) if exp_path.is_dir() else []
    if exp_path.is_dir():
        fill_missing_checkpoints(exp_path)
    if fixed:
        print(f"[{phase}] the driver died while Ray wrote its snapshot: using the last good copy of {', '.join(fixed)}",
              flush=True)
    restore_path = f"{tune_root}/{phase}" if remote else str(exp_path)
    if remote:
        storage_mod.fill_missing_checkpoints_at(restore_path)
    if phase == "search":  # the live copy of the study goes to this sweep dir, restored or not
        from sweeps.search import MIRROR_ENV

        os.environ[MIRROR_ENV] = str(sweep_dir / "optuna.db")
    # Nothing Tune saved binds the sweep to where it was: Tune takes the storage path from restore_path,
    # the new trials' from new_trials_where_restored, the trainable is given again, and so are the callbacks.
    new_trials_where_restored()
    restored_trials_keep_their_json()
    restorable = tune.Tuner.can_restore(restore_path)
    rebuild = restorable and not remote and _tuner_pkl_damaged(exp_path, phase)
    if restorable and not rebuild:
        print(f"[{phase}] restoring {restore_path}", flush=True)
        _wandb_env(spec)  # the restored W&B callback needs the mode too
        tuner = tune.Tuner.restore(
            restore_path, trainable, resume_unfinished=True, resume_errored=True,
            param_space=_param_space(spec, phase, state),
        )
        run_config = tuner._local_tuner.get_run_config()  # the callbacks Tuner.restore unpickled from tuner.pkl
        run_config.callbacks = _relocated(run_config.callbacks, spec, sweep_dir, exp_path, remote, candidates)
    else:
        from pah.conf import resolved_shape

        num_tasks = resolved_shape(base_cfg.data).num_tasks
        metric, mode = spec.metrics[0], spec.modes[0]
        search = phase == "search"
        point = (state.get("base") or {}).get("point") if search and spec.searcher != "grid" else None
        if search and progress and not rebuild:
            print(_base_line(spec, state.get("base")), flush=True)
        callbacks: list[Any] = [
            ConciseProgress(phase, metric, mode, sweep_dir=str(sweep_dir), enabled=bool(progress), candidates=candidates,
                            scheduler=spec.scheduler.name, base_point=point,
                            total=spec.search_trials if search and spec.searcher != "grid" else
                            None if search else len(confirm_jobs(spec, state)),
                            verbosity=progress if isinstance(progress, str) else "auto"),
        ]
        if not remote:  # an object store replaces each object whole: no half-written snapshot to guard against
            callbacks.append(SnapshotGuard(str(exp_path)))
        else:  # the driver's own files (W&B runs, the Optuna copy) reach the bucket while the phase runs
            callbacks.append(_uploads_cls()(str(sweep_dir), remote))
        callbacks += _wandb_callback(spec, sweep_dir, candidates)
        search_alg = _searcher(spec, base_cfg.seed, point, sweep_dir / "optuna.db") if search else None
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec, phase, state),
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=_scheduler(spec, num_tasks) if search else None,
                num_samples=spec.search_trials if search else 1,
                # a BasicVariantGenerator limits itself (Tune ignores this for it, with a warning)
                max_concurrent_trials=None if search and spec.searcher == "random" else spec.max_concurrent,
                # A finished or stopped trial's worker process runs the next trial: its imports (torch,
                # Ray's session) and its datasets are paid once per worker, not once per trial
                # (bench/scale.py: the overhead per trial of short trials).
                reuse_actors=True,
                # named when Tune makes the trial, not when it starts (a restore finds its checkpoints)
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=phase,
                storage_path=tune_root,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=callbacks,
                verbose=0,
            ),
        )
        if rebuild:  # that fresh Tuner wrote a good tuner.pkl; Tune's experiment state holds the rest
            print(f"[{phase}] restoring {restore_path}", flush=True)
            tuner = tune.Tuner.restore(
                restore_path, trainable, resume_unfinished=True, resume_errored=True,
                param_space=_param_space(spec, phase, state),
            )
        elif search:
            state["phases"]["confirm"]["search_seed"] = base_cfg.seed
    state["phases"][phase]["started"] = True
    _save(sweep_dir, state)
    handles = start_packers(packers, capacity=pack, cpus=spec.resources.cpus * pack, gpus=spec.resources.gpus) if packers else []
    try:
        with (interrupts.fitting() if interrupts is not None else contextlib.nullcontext(),
              SyncFailures(f"storage {restore_path}" if remote else f"disk of {exp_path}")):
            grid = tuner.fit()  # returns after an interrupt too: what ended is counted below
    finally:
        stop_packers(handles)
    if remote:  # the trials' small files, for the candidates, the table and stopped.json
        storage_mod.download(storage_mod.join(remote, "trials", phase), sweep_dir / "trials" / phase)
        if phase == "search":
            storage_mod.download(f"{tune_root}/search", sweep_dir / "tune" / "search",
                                 keep=lambda rel: rel.startswith("searcher-state-"))
    if phase == "search" and spec.searcher.startswith("optuna"):
        _export_study(sweep_dir)
    trials = list(grid._experiment_analysis.trials)  # Tune's Trial objects: their status and last result
    _mark_stopped(sweep_dir, spec, phase, trials)
    errored = [t for t in trials if t.status == "ERROR"]
    _record_errors(sweep_dir, phase, errored)
    if remote:
        _snapshot_for_orphans(sweep_dir, f"{tune_root}/{phase}", phase)
    if remote:
        _push(sweep_dir, "optuna.db", "wandb",
              *(str(p.relative_to(sweep_dir)) for name in ("stopped.json", "error.json")
                for p in (sweep_dir / "trials" / phase).glob(f"*/{name}")))
    # Done only when every trial the phase owes ended for a reason (finished, stopped by the
    # scheduler, errored past max_failures): fit() returns after an interrupt as well.
    ended = [t for t in trials if _ended(t, sweep_dir / "trials" / phase)]
    owed = max(_owed(spec, state, phase), len(trials))
    interrupted = interrupts is not None and interrupts.signum is not None
    done = not interrupted and len(ended) == owed
    record = state["phases"][phase]
    record["done"] = done
    record["seconds"] = round(record.get("seconds", 0.0) + time.monotonic() - t0, 1)
    record["errored"] = len(errored)
    _save(sweep_dir, state)
    if progress:
        word = "finished" if done else "interrupted" if interrupted else "stopped"
        print(f"[{phase}] {word}: {len(ended)} of {owed} trials ended, {len(errored)} errored", flush=True)
    if done:
        return
    open_ = sorted(str(t.trial_id) for t in trials if t not in ended)
    which = f" ({', '.join(open_[:5])}{', ...' if len(open_) > 5 else ''} did not)" if open_ else ""
    left = (f"{phase}: {len(ended)} of {owed} trials ended{which}; the others continue from their last task "
            "checkpoint")
    if interrupted:
        raise interrupts.interrupted(left)
    raise Failed(f"Ray Tune ended the {phase} phase before its trials ({left}); resume with: pah sweep --resume "
                 f"{shlex.quote(str(remote or sweep_dir))}")


def _tuner_pkl_damaged(exp_path: Path, phase: str) -> bool:
    """Whether Tune's ``tuner.pkl`` of this phase is unreadable (truncated, emptied): then it is rebuilt.

    It holds only what this driver builds from sweep.json (the Tuner's settings and callbacks): a fresh
    Tuner writes it again, and Tune's experiment state (``experiment_state-*.json`` and the searcher's
    snapshot) restores the trials and the search. Without that state there is nothing to restore it
    from: a ``Failed`` naming the file.
    """
    from ray import cloudpickle

    from analysis.states import first_line

    path = exp_path / "tuner.pkl"
    try:
        cloudpickle.loads(path.read_bytes())
        return False
    except Exception as e:  # noqa: BLE001 - any unreadable pickle (UnpicklingError, EOFError, ...)
        why = first_line(f"{type(e).__name__}: {e}")
    if not any(exp_path.glob("experiment_state-*.json")):
        raise Failed(f"{path} is damaged ({why}) and {exp_path} holds no Tune experiment state to rebuild it from; "
                     f"restore that folder from a copy of the sweep, or start the sweep again")
    print(f"[{phase}] {path} is damaged ({why}): rebuilding it from {STATE} and Tune's experiment state", flush=True)
    return True


def _relocated(callbacks: list[Any] | None, spec: Spec, sweep_dir: Path, exp_path: Path, remote: str | None,
               candidates: list[dict[str, Any]] | None) -> list[Any]:
    """The callbacks a restored Tuner unpickled, made this sweep dir's: the progress line and the snapshot
    guard keep their settings with the paths of where the sweep is now; the uploads and the W&B callback
    (stateless until the phase starts) are built again here, so W&B runs go to this sweep's wandb/."""
    from sweeps.progress import ConciseProgress
    from sweeps.snapshot import SnapshotGuard

    # a W&B callback unpickled has its module imported already; importing it otherwise costs 0.8 s (wandb)
    wandb_mod = sys.modules.get("ray.air.integrations.wandb")
    WandbLoggerCallback = wandb_mod.WandbLoggerCallback if wandb_mod else ()
    out: list[Any] = []
    for cb in callbacks or []:
        if isinstance(cb, ConciseProgress):
            cb.sweep_dir = str(sweep_dir)
        elif isinstance(cb, SnapshotGuard):
            cb.exp_dir = str(exp_path)
        elif isinstance(getattr(cb, "mirror", None), storage_mod.Mirror):  # Uploads, a class of _uploads_cls
            cb = _uploads_cls()(str(sweep_dir), remote)
        elif isinstance(cb, WandbLoggerCallback):
            continue  # built again below
        out.append(cb)
    return out + _wandb_callback(spec, sweep_dir, candidates)


def _uploads_cls():
    from ray.tune import Callback

    class Uploads(Callback):
        def __init__(self, local: str, uri: str) -> None:
            self.mirror = storage_mod.Mirror(local, uri, ("wandb", "optuna.db"))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.mirror.maybe_sync()

    return Uploads


def _base_line(spec: Spec, base: dict[str, Any] | None) -> str:
    """What the search does with the base config, in one line."""
    if spec.methods:
        from sweeps.study import base_line

        return base_line(spec)
    confirm = "; the confirm phase runs the base config itself" if spec.confirm.top_k else ""
    if not base or not spec.space:
        return "[search] the base config is not one of the search's trials" + confirm
    shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in base["values"].items())
    if spec.searcher == "grid":
        return f"[search] base config ({shown}): a grid searches its own points only" + confirm
    if not base["outside"]:
        return f"[search] trial 1 is the base config ({shown})"
    out = ", ".join(f"{k}={_fmt(base['values'][k])}" for k in base["outside"])
    return (f"[search] base config ({shown}): {out} lies outside the space, so trial 1 takes the base's values for the "
            f"other keys only{confirm}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _snapshot_for_orphans(sweep_dir: Path, exp_uri: str, phase: str) -> None:
    """On object storage the staging copy holds none of Tune's snapshots, so a trial dir without an end
    reads as unfinished (resumable) even where no restore knows it: one a lost head orphaned. Where some
    trial dir has no end, Tune's newest snapshot is fetched beside the staging copy's other Tune files,
    and the summary tells the orphans apart (``analysis.states``: known to the snapshot or not)."""
    from analysis.states import TrialState, trial_status

    trials = sweep_dir / "trials" / phase
    if trials.is_dir() and any(trial_status(d).state is TrialState.UNFINISHED for d in trials.iterdir() if d.is_dir()):
        storage_mod.download_newest(exp_uri, sweep_dir / "tune" / phase, "experiment_state-")


def _ended(trial: Any, trials_dir: Path) -> bool:
    """Whether a Tune trial ended for a reason: finished, stopped by the scheduler, or errored for good.

    Tune marks the trials an interrupt cut short TERMINATED too (``TuneController.cleanup``, after
    its last snapshot, which keeps them RUNNING), but their last result is not a final one: only a
    finished trial's or a stopped one's carries ``done``. A trial restored TERMINATED from a snapshot
    that Tune wrote before it recorded the final result (a driver killed just then) has no ``done``
    either: its own directory is the second witness (``result.json``: finished; ``stopped.json``:
    stopped early), as for ``pah analyze``.
    """
    if trial.status == "ERROR":
        return True
    if trial.status != "TERMINATED":
        return False
    if (trial.last_result or {}).get("done"):
        return True
    from analysis.states import TrialState, trial_status

    d = trials_dir / str(trial.trial_id)
    return d.is_dir() and trial_status(d).state in (TrialState.FINISHED, TrialState.STOPPED)


def _owed(spec: Spec, state: dict[str, Any], phase: str) -> int:
    """How many trials the phase runs in all: the search's samples (times the grid), the confirm jobs."""
    if phase == "confirm":
        return len(confirm_jobs(spec, state))
    if spec.searcher == "grid":
        return spec.search_trials * math.prod(len(d.args) for d in spec.space.values())
    return spec.search_trials


#: error types (error.json's "type") that are the trial's own and recur on a retry from the same
#: checkpoint: a non-finite loss (pah.trial.NonFiniteLoss: deterministic from that checkpoint) and a
#: bad config (pah.errors.UserError). Every other error (a worker killed, out of memory, a node or the
#: storage lost) is the machine's, and ``pah sweep --resume`` retries it.
OWN_ERRORS = ("NonFiniteLoss", "UserError")


def _errored(sweep_dir: Path, phase: str, report: SweepReport | None = None) -> list[tuple[Path, str]]:
    """(trial dir, error type) of every errored trial of a phase, from the trial dirs (analysis.states), or
    from the trial states the sweep's ``report`` read already."""
    from analysis.states import ERROR, TrialState, trial_status

    root = sweep_dir / "trials" / phase
    known = {s.path: s.state for s in report.statuses} if report is not None else {}
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and (known[d] if d in known else trial_status(d).state) is TrialState.ERRORED:
            try:
                kind = str(read_json(d / ERROR).get("type") or "")
            except (OSError, ValueError, AttributeError):
                kind = ""
            out.append((d, kind))
    return out


def _record_errors(sweep_dir: Path, phase: str, errored: list[Any]) -> None:
    """Every errored trial gets its error.json: one whose worker died (killed, out of memory, a node
    lost) wrote none, or an older one, from before a retry that trained further; it is taken from Ray's."""
    from sweeps.progress import error_reason
    from sweeps.trainable import META

    for t in errored:
        d = sweep_dir / "trials" / phase / t.trial_id
        try:
            done = int(read_json(d / "checkpoint" / META)["tasks_completed"])
        except (OSError, ValueError, KeyError, TypeError):
            done = 0
        try:
            old = read_json(d / "error.json")
            if isinstance(old, dict) and int(old.get("tasks_done") or 0) >= done:
                continue  # the trainable's own record of this error
        except (OSError, ValueError, TypeError):
            pass
        reason = error_reason(t)  # the last line of Ray's error.txt
        head, sep, rest = reason.partition(": ")
        if sep and head and " " not in head:  # "ray.exceptions.RayTaskError: ..."
            kind, message = head.rsplit(".", 1)[-1], rest
        else:  # a worker that died: Ray says so in words ("The actor is dead because its worker process has died")
            kind, message = ("WorkerDied" if "died" in reason else "Error"), reason
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "error.json", {"type": kind, "message": message, "tasks_done": done,
                                             "recorded_by": "driver"})


def _reopen_errored(sweep_dir: Path, spec: Spec, state: dict[str, Any]) -> None:
    """On a resume, a done phase with trials errored for a reason outside them (not OWN_ERRORS) runs again:
    Tune's restore continues those from their last task checkpoint, with a fresh max_failures."""
    from sweeps.snapshot import fresh_failures_at

    remote = remote_of(sweep_dir)
    for phase in PHASES:
        record = state["phases"][phase]
        if not record.get("done"):
            continue
        retry = [d for d, kind in _errored(sweep_dir, phase) if kind not in OWN_ERRORS]
        if not retry:
            continue
        exp = storage_mod.join(remote, "tune", phase) if remote else sweep_dir / "tune" / phase
        fresh_failures_at(exp, {d.name for d in retry})
        record["done"] = False
        confirm = state["phases"]["confirm"]
        if phase == "search" and "candidates" in confirm:
            if confirm.get("started"):  # its runs exist: the retried trials cannot change what it confirmed
                print("[confirm] note: its configs were chosen before these search trials were retried; one that "
                      "now beats them is in the search's table but not confirmed over seeds", flush=True)
            else:  # chosen, not yet run: chosen again from the whole search once the retried trials end
                del confirm["candidates"]
        _save(sweep_dir, state)
        print(f"[{phase}] retrying {len(retry)} errored trial(s) from their last task checkpoint: "
              f"{', '.join(d.name for d in retry)}", flush=True)


def _check_errored(sweep_dir: Path, resume_cmd: str, report: SweepReport | None = None) -> None:
    """A sweep with errored trials fails (exit 1), naming how many, which kind, and the resume command."""
    found = [(phase, d, kind) for phase in PHASES for d, kind in _errored(sweep_dir, phase, report)]
    if not found:
        return
    per_phase = ", ".join(f"{p} {sum(1 for q, _, _ in found if q == p)}" for p in PHASES if any(q == p for q, _, _ in found))
    own = [(p, d, k) for p, d, k in found if k in OWN_ERRORS]
    retry = len(found) - len(own)
    text = f"{len(found)} trial(s) errored ({per_phase})"
    if own:
        text += (f"; {len(own)} by an error of their own that a retry repeats ({', '.join(sorted({k for _, _, k in own}))}"
                 f": change the config; e.g. {own[0][1] / 'error.json'})")
    if retry:
        text += f"; {retry} by a fault outside the trial, which a resume retries from its last task checkpoint"
    raise Failed(f"{text}; resume with: {resume_cmd}")


def _mark_stopped(sweep_dir: Path, spec: Spec, phase: str, trials: list[Any]) -> None:
    """Make sure every trial the scheduler ended early has its stopped.json (the progress callback writes it
    as it happens; a driver that died in between, and was restored, would miss it). Only a real scheduler
    stops trials: with none, a trial short of its last task was cut short (an interrupt), and resumes."""
    from sweeps.progress import mark_stopped

    if spec.scheduler.name in ("none", "", None):
        return
    for t in trials:
        m = t.last_result or {}
        if t.status == "TERMINATED" and m.get("done") and m.get("trial_id"):
            mark_stopped(sweep_dir / "trials" / phase / str(m["trial_id"]), m, by=spec.scheduler.name,
                         metric=spec.metrics[0])
