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
``sweep_dir`` is the driver's local staging copy of it (see sweeps/storage.py and docs/storage.md).

The base config (the spec's preset plus ``set``) is a candidate like any other: it is the
search phase's first trial (its values for the searched keys that lie in the space), and the
confirm phase runs it over the confirm seeds next to the top-K, so that the final table says
how the best config compares with not sweeping at all (difference and Welch p).

A phase that finished is never run again; an interrupted one is restored with
``Tuner.restore(resume_unfinished=True, resume_errored=True)``: finished trials are kept,
unfinished and errored ones continue from their last task checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from pah.errors import UserError
from pah.io import atomic_write_bytes, atomic_write_json, read_json
from sweeps import storage as storage_mod
from sweeps.spec import Spec, load_spec, spec_from_dict
from sweeps.storage import is_uri, remote_of

__all__ = ["run_sweep", "DEFAULT_STORAGE", "STATE", "REPORT", "select_candidates", "summary_table", "write_report",
           "confirm_jobs"]

DEFAULT_STORAGE = Path("runs") / "sweeps"
STATE = "sweep.json"
REPORT = "report.html"
PHASES = ("search", "confirm")


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
    remote = remote_of(sweep_dir)  # a URI: sweep_dir is the driver's staging copy (sweeps/storage.py)
    print(f"sweep: {remote or sweep_dir}", flush=True)
    if remote is None:
        _check_storage(sweep_dir)
    if state["phases"]["search"].get("started"):
        done = [p for p in PHASES if state["phases"][p]["done"]]
        print(f"resuming {spec_obj.name} ({', '.join(done) if done else 'no phase'} done)", flush=True)

    phases = state["phases"]
    if phases["search"]["done"] and (phases["confirm"]["done"] or not spec_obj.confirm.top_k):
        print(summary_table(sweep_dir, spec_obj, state), flush=True)  # finished already: no Ray needed
        if not (sweep_dir / REPORT).exists():
            write_report(sweep_dir)
        return sweep_dir
    if "base" not in state:
        from sweeps.search import base_point

        state["base"] = base_point(spec_obj)
        _save(sweep_dir, state)
    with _ray(address, spec_obj):
        if not state["phases"]["search"]["done"]:
            _run_phase(sweep_dir, spec_obj, state, "search", progress)
        if spec_obj.confirm.top_k:
            if "candidates" not in state["phases"]["confirm"]:
                state["phases"]["confirm"]["candidates"] = select_candidates(sweep_dir, spec_obj, base=state["base"])
                _save(sweep_dir, state)
            if not state["phases"]["confirm"]["done"]:
                _run_phase(sweep_dir, spec_obj, state, "confirm", progress)

    print(summary_table(sweep_dir, spec_obj, state), flush=True)
    write_report(sweep_dir)
    return sweep_dir


def write_report(sweep_dir: Path) -> Path | None:
    """SWEEP/report.html (see analysis.html); a failure is a note, never a failed sweep."""
    try:
        from analysis.html import write_html

        path = write_html([sweep_dir], sweep_dir / REPORT)
        _push(sweep_dir, REPORT)
    except Exception as e:  # the results are on disk either way; `pah analyze SWEEP --html` retries
        print(f"note: could not write {sweep_dir / REPORT} ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None
    remote = remote_of(sweep_dir)
    print(f"report: {storage_mod.join(remote, REPORT) if remote else path}", flush=True)
    return path


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
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
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
        loaded = _load_state(local)
        for c in loaded[2]["phases"]["confirm"].get("candidates") or []:  # staged elsewhere ($TMPDIR) before?
            if c.get("dir"):
                c["dir"] = str(local / "trials" / "search" / Path(c["dir"]).name)
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
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- phases


def _param_space(spec: Spec, phase: str, state: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    if phase == "confirm":
        # a grid over the (candidate, seed) pairs: not every candidate runs every seed (see confirm_jobs).
        # Ray 2.60 hands these functions its spec dict (config under .config), calling that form deprecated;
        # the form it recommends fails for a value from a grid (tests/test_sweep_base.py resolves this space).
        jobs = confirm_jobs(spec, state)
        return {
            "job": tune.grid_search(list(range(len(jobs)))),
            "candidate": tune.sample_from(lambda s: jobs[s.config.job][0]),
            "seed": tune.sample_from(lambda s: jobs[s.config.job][1]),
        }
    space: dict[str, Any] = {}
    for key, d in spec.space.items():
        if spec.searcher == "grid":
            space[key] = tune.grid_search(list(d.args))
        elif d.kind == "uniform":
            space[key] = tune.uniform(*d.args)
        elif d.kind == "loguniform":
            space[key] = tune.loguniform(*d.args)
        elif d.kind == "int":
            space[key] = tune.randint(d.args[0], d.args[1] + 1)  # spec bounds are inclusive
        else:
            space[key] = tune.choice(list(d.args))
    return space


def confirm_jobs(spec: Spec, state: dict[str, Any]) -> list[tuple[int, int]]:
    """(candidate index, seed) of every confirm trial: each candidate on each confirm seed, except the
    search seed for a candidate whose search trial finished on it (that result is reused)."""
    confirm = state["phases"]["confirm"]
    search_seed = confirm.get("search_seed")
    return [(i, seed) for i, c in enumerate(confirm.get("candidates") or []) for seed in spec.confirm.seeds
            if not (seed == search_seed and c.get("dir"))]


def _searcher(spec: Spec, seed: int, point: dict[str, Any] | None, mirror: Path | None = None):
    """Optuna (TPE, multi-objective) or Tune's BasicVariantGenerator, asking for ``point`` (the base) first."""
    if spec.searcher == "grid":
        return None  # the grid's own points; the base config enters through the confirm phase
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

    # ASHA takes one metric: the first one of a multi-objective spec
    return ASHAScheduler(
        time_attr="tasks_completed",
        metric=spec.metrics[0],
        mode=spec.modes[0],
        max_t=num_tasks,
        grace_period=min(spec.scheduler.grace_period, num_tasks),
        reduction_factor=spec.scheduler.reduction_factor,
    )


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
        """W&B runs grouped by config_id, so the seeds of one config share a group; complete when
        the phase ends (sweeps/wandb_runs.py: a restored trial's run replays its earlier one)."""

        def log_trial_start(self, trial):
            from sweeps.trainable import params_of

            params = params_of(trial.config, candidates)
            self.group = _config_id_of(spec, trial.config, candidates)
            # the run's config says what the trial trained: its searched values, config_id and seed
            # (a confirm trial's Tune config holds only a candidate index and a seed)
            self.kwargs["config"] = {**{k: v for k, v in trial.config.items() if k not in self.excludes}, **params,
                                     "config_id": self.group,
                                     "seed": spec.trial_config(params, trial.config.get("seed")).seed}
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
        excludes=["config_id", "seed"],
    )]


def _config_id_of(spec: Spec, config: dict[str, Any], candidates: list[dict[str, Any]] | None) -> str:
    from pah.config import config_id
    from sweeps.trainable import params_of

    return config_id(spec.trial_config(params_of(config, candidates), config.get("seed")))


def _run_phase(sweep_dir: Path, spec: Spec, state: dict[str, Any], phase: str, progress: bool | str) -> None:
    from ray import tune

    from sweeps.packing import packer_names, start_packers, stop_packers
    from sweeps.progress import ConciseProgress
    from sweeps.snapshot import SnapshotGuard, fill_missing_checkpoints, pace_tune_snapshots, repair
    from sweeps.trainable import make_trainable

    base_cfg = spec.trial_config()
    exp_path = sweep_dir / "tune" / phase
    remote = remote_of(sweep_dir)  # object storage: Tune and the trials write there directly
    # Tune's snapshots stay a small share of the driver's time at 1,000 trials. On object storage a
    # trial's own directory is scratch on its node, so there Tune's snapshot must name each newest
    # checkpoint as soon as it is reported: a snapshot after every checkpoint, as Ray does.
    pace_tune_snapshots(force_on_checkpoint=bool(remote))
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
        storage_mod.newest_checkpoints_everywhere(restore_path)
    if phase == "search":  # the live copy of the study goes to this sweep dir, restored or not
        from sweeps.search import MIRROR_ENV

        os.environ[MIRROR_ENV] = str(sweep_dir / "optuna.db")
    if tune.Tuner.can_restore(restore_path):
        print(f"[{phase}] restoring {restore_path}", flush=True)
        _wandb_env(spec)  # the restored W&B callback needs the mode too
        tuner = tune.Tuner.restore(
            restore_path, trainable, resume_unfinished=True, resume_errored=True,
            param_space=_param_space(spec, phase, state),
        )
    else:
        from pah.data import BENCHMARKS

        num_tasks = BENCHMARKS.get(base_cfg.data.name)().resolved_shape(base_cfg.data).num_tasks
        metric, mode = spec.metrics[0], spec.modes[0]
        search = phase == "search"
        point = (state.get("base") or {}).get("point") if search and spec.searcher != "grid" else None
        if search and progress:
            print(_base_line(spec, state.get("base")), flush=True)
        callbacks: list[Any] = [
            ConciseProgress(phase, metric, mode, sweep_dir=str(sweep_dir), enabled=bool(progress), candidates=candidates,
                            scheduler=spec.scheduler.name, base_point=point,
                            total=spec.num_samples if search and spec.searcher != "grid" else
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
                num_samples=spec.num_samples if search else 1,
                # a BasicVariantGenerator limits itself (Tune ignores this for it, with a warning)
                max_concurrent_trials=None if search and spec.searcher == "random" else spec.max_concurrent,
                # A finished or stopped trial's worker process runs the next trial: its imports (torch,
                # Ray's session) and its datasets are paid once per worker, not once per trial
                # (bench/scale.py: the overhead per trial of short trials).
                reuse_actors=True,
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
        if search:
            state["phases"]["confirm"]["search_seed"] = base_cfg.seed
    state["phases"][phase]["started"] = True
    _save(sweep_dir, state)
    handles = start_packers(packers, capacity=pack, cpus=spec.resources.cpus * pack, gpus=spec.resources.gpus) if packers else []
    try:
        grid = tuner.fit()
    finally:
        stop_packers(handles)
    if remote:  # the trials' small files, for the candidates, the table and stopped.json
        storage_mod.download(storage_mod.join(remote, "trials", phase), sweep_dir / "trials" / phase)
        if phase == "search":
            storage_mod.download(f"{tune_root}/search", sweep_dir / "tune" / "search",
                                 keep=lambda rel: rel.startswith("searcher-state-"))
    if phase == "search" and spec.searcher.startswith("optuna"):
        _export_study(sweep_dir)
    _mark_stopped(sweep_dir, spec, phase, grid)
    if remote:
        _push(sweep_dir, "optuna.db", "wandb",
              *(str(p.relative_to(sweep_dir)) for p in (sweep_dir / "trials" / phase).glob("*/stopped.json")))
    errored = [r for r in grid if r.error is not None]
    state["phases"][phase]["done"] = True
    state["phases"][phase]["seconds"] = round(state["phases"][phase].get("seconds", 0.0) + time.monotonic() - t0, 1)
    state["phases"][phase]["errored"] = len(errored)
    _save(sweep_dir, state)
    if progress:
        print(f"[{phase}] finished: {len(grid)} trials, {len(errored)} errored", flush=True)


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


def _mark_stopped(sweep_dir: Path, spec: Spec, phase: str, grid) -> None:
    """Make sure every trial the scheduler ended early has its stopped.json (the progress callback writes it
    as it happens; a driver that died in between, and was restored, would miss it)."""
    from sweeps.progress import mark_stopped

    for r in grid:
        m = r.metrics or {}
        if r.error is None and m.get("trial_id"):
            mark_stopped(sweep_dir / "trials" / phase / str(m["trial_id"]), m, by=spec.scheduler.name,
                         metric=spec.metrics[0])


# --------------------------------------------------------------------------- confirm candidates and the table


def _phase_results(sweep_dir: Path, phase: str) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted((sweep_dir / "trials" / phase).glob("*/result.json")):
        try:
            out.append((p.parent, read_json(p)))
        except (OSError, ValueError):
            continue
    return out


def _value(result: dict[str, Any], metric: str) -> float | None:
    section = "val_metrics" if metric.startswith("val_") else "metrics"
    v = (result.get(section) or {}).get(metric.removeprefix("val_"))
    return None if v is None or not math.isfinite(v) else float(v)


def select_candidates(sweep_dir: Path, spec: Spec, *, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The top-K distinct configs of phase 1 that finished the whole sequence, plus the base config.

    Single objective: sorted by the metric. Several: non-dominated fronts first, then the
    first metric within a front. ``base`` (see :func:`sweeps.search.base_point`): the base
    config is marked ``"base": True`` where it is among the top K, else appended, with the
    dir of its finished search trial if there is one (else ``"dir": None``: the confirm
    phase then runs it on the search seed too).
    """
    from sweeps.trainable import read_params

    rows = []
    for d, res in _phase_results(sweep_dir, "search"):
        vals = [_value(res, m) for m in spec.metrics]
        if any(v is None for v in vals):
            continue
        signed = [v if mode == "max" else -v for v, mode in zip(vals, spec.modes, strict=True)]
        rows.append({"dir": str(d), "config_id": res["config_id"], "params": read_params(d)["params"], "score": signed})
    remaining = list(rows)
    ranked: list[dict[str, Any]] = []
    while remaining:  # peel off non-dominated fronts (all maximised after the sign flip)
        front = [r for r in remaining if not any(_dominates(o["score"], r["score"]) for o in remaining)]
        ranked += sorted(front, key=lambda r: r["score"][0], reverse=True)
        remaining = [r for r in remaining if r not in front]
    out, seen = [], set()
    for r in ranked:
        if r["config_id"] not in seen:
            seen.add(r["config_id"])
            out.append(r)
    out = out[: spec.confirm.top_k]
    if base is not None and spec.confirm.top_k:
        mine = [r for r in out if r["config_id"] == base["config_id"]]
        if mine:
            mine[0]["base"] = True
        else:
            done = [r for r in ranked if r["config_id"] == base["config_id"]]
            out.append({"dir": done[0]["dir"] if done else None, "config_id": base["config_id"],
                        "params": dict(base["values"]), "score": done[0]["score"] if done else None, "base": True})
    return out


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def _table_dirs(sweep_dir: Path, spec: Spec, state: dict[str, Any]) -> list[Path]:
    if spec.confirm.top_k:
        confirm = state["phases"]["confirm"]
        reused = confirm.get("search_seed") in spec.confirm.seeds  # phase 1 ran that seed already
        return [Path(c["dir"]) for c in confirm.get("candidates", []) if reused and c.get("dir")] + [
            sweep_dir / "trials" / "confirm"]
    return [sweep_dir / "trials" / "search"]


def summary_table(sweep_dir: Path, spec: Spec, state: dict[str, Any]) -> str:
    """The seed-averaged table of the confirmed configs (all configs when there is no confirm phase)."""
    dirs = [d for d in _table_dirs(sweep_dir, spec, state) if d.exists()]
    title = "confirmed configs, seed-averaged" if spec.confirm.top_k else "all configs, seed-averaged"
    try:
        from analysis import summarize_dirs  # the analysis package, when it is installed
    except ImportError:
        summarize_dirs = None
    if summarize_dirs is not None and dirs:
        try:
            from analysis.sweep import sweep_summary

            return (f"\n{title}:\n" + summarize_dirs([str(d) for d in dirs], by=None, fmt="table", quiet=True)
                    + "".join(f"\n{line}" for line in sweep_summary(sweep_dir)) + "\n")
        except Exception as e:  # the fallback below still gives the user their numbers
            print(f"note: analysis.summarize_dirs failed ({type(e).__name__}: {e}); plain table", file=sys.stderr)
    from sweeps.table import plain_table

    return f"\n{title}:\n" + plain_table(dirs, params_of=_params_of(sweep_dir))


def _params_of(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """config_id -> the sampled params of any trial with that config."""
    out: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        for d, res in _phase_results(sweep_dir, phase):
            p = d / "params.json"
            if p.exists():
                out.setdefault(res["config_id"], read_json(p)["params"])
    return out
