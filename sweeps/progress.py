"""A concise live view of a Tune phase: a status line now and then, and the trial events worth a line.

Tune's own tables are switched off (``verbose=0``); this callback prints, to stdout, each
trial's fate in plain words (see :mod:`analysis.states`)::

    [search] 12:01:02 3f2a_00000 start  (base config) lr=0.001, head_lr=0.001, lambda_kd=1
    [search] 12:01:30 3f2a_00001 finished  ACC 93.1% FM 2.0% val_avg_acc 0.934 (5/5 tasks) | 1 running, ...
    [search] 12:01:41 3f2a_00002 stopped early by asha after task 2/5  ACC 88.0% ... val_avg_acc 0.880
    [search] 12:01:50 3f2a_00003 ERROR  NonFiniteLoss: non-finite loss at task 1/5, epoch 1, step 3 | ...

How much it prints is ``verbosity`` (``pah sweep --progress``): ``trials``, a line per trial
event as above; ``summary``, only the notable ones (errors, retries, a new best) and the
status line, every 30 s and when the phase ends::

    [search] 12:31:02 412/1000 trials ended (5 finished, 405 stopped early, 2 errored), 32 running, 556 to start | best val_avg_acc 0.9312 (3f2a_00017) | 41.2 trials/min, ETA 14m

``auto`` (the default) is ``trials`` for phases of up to ``TRIAL_LINES_UP_TO`` trials, else
``summary``.

A trial the scheduler stops gets a ``stopped.json`` in its directory (``mark_stopped``), so
``pah analyze`` and the HTML report tell it from one that crashed or was killed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from analysis.states import ERROR, STOPPED, TrialState, first_line, trial_status
from pah.io import atomic_write_json

__all__ = ["ConciseProgress", "error_reason", "mark_stopped", "is_partial", "VERBOSITY", "TRIAL_LINES_UP_TO"]

VERBOSITY = ("auto", "trials", "summary")
#: with verbosity "auto", phases of more trials than this print the summary only
TRIAL_LINES_UP_TO = 30


def error_reason(trial: Any, out_dir: Path | None = None) -> str:
    """The first line of a failed trial's error: the trainable's error.json, else the last line of Ray's error file."""
    if out_dir is not None and (out_dir / ERROR).exists():
        st = trial_status(out_dir)
        if st.state is TrialState.ERRORED:
            return st.detail
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return first_line(lines[-1], 300)
    return "unknown error"


def is_partial(result: dict[str, Any] | None) -> bool:
    """A last result from before the final task: the trial did not finish its sequence."""
    r = result or {}
    return "tasks_completed" in r and r.get("tasks_completed") != r.get("num_tasks")


def mark_stopped(trial_dir: Path, result: dict[str, Any], *, by: str, metric: str | None = None) -> bool:
    """Record in ``trial_dir`` that the scheduler ended this trial early; False if it had finished (or has no dir)."""
    if not trial_dir.is_dir() or (trial_dir / "result.json").exists() or not is_partial(result):
        return False
    marker = {"by": by, "tasks_completed": result.get("tasks_completed"), "num_tasks": result.get("num_tasks")}
    if isinstance(result.get("train_seconds"), (int, float)):  # what it cost (a study's table counts it)
        marker["train_seconds"] = float(result["train_seconds"])
    if metric is not None and isinstance(result.get(metric), (int, float)):
        marker.update(metric=metric, value=float(result[metric]))
    if not (trial_dir / STOPPED).exists():
        atomic_write_json(trial_dir / STOPPED, marker)
    return True


class ConciseProgress(Callback):
    # defaults for instances unpickled from a sweep started by an older version
    scheduler = "the scheduler"
    base_point: dict[str, Any] | None = None
    total: int | None = None
    verbosity = "trials"
    _t0: float | None = None
    _ended0 = 0

    def __init__(
        self,
        phase: str,
        metric: str,
        mode: str,
        *,
        sweep_dir: str,
        enabled: bool = True,
        every_s: float = 30.0,
        candidates: list[dict[str, Any]] | None = None,
        scheduler: str = "the scheduler",
        base_point: dict[str, Any] | None = None,
        total: int | None = None,
        verbosity: str = "auto",
    ):
        if verbosity not in VERBOSITY:
            raise ValueError(f"verbosity {verbosity!r}: expected one of {', '.join(VERBOSITY)}")
        self.total, self.verbosity = total, verbosity
        self.candidates = candidates
        self.scheduler = scheduler
        self.base_point = base_point
        self.phase, self.metric, self.mode = phase, metric, mode
        self.sweep_dir = sweep_dir
        self.enabled = enabled
        self.every_s = every_s
        self._last = 0.0
        self._best: tuple[float, str] | None = None

    # ---- helpers

    def _print(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.phase}] {time.strftime('%H:%M:%S')} {text}", flush=True)

    def _counts(self, trials: list[Any], ending: Any = None, as_status: str = "TERMINATED") -> str:
        """Trials by state; ``ending`` is the trial whose end is being reported (Tune updates its status after)."""
        status = [as_status if t is ending else t.status for t in trials]
        stopped = sum(s == "TERMINATED" and is_partial(t.last_result) for s, t in zip(status, trials, strict=True))
        return (
            f"{status.count('RUNNING')} running, {status.count('PENDING') + status.count('PAUSED')} pending, "
            f"{status.count('TERMINATED') - stopped} finished, {stopped} stopped early, {status.count('ERROR')} errored"
        )

    def _per_trial(self) -> bool:
        """Whether every trial event gets a line (else only the notable ones)."""
        return self.verbosity == "trials" or (self.verbosity == "auto" and (self.total or 0) <= TRIAL_LINES_UP_TO)

    def status(self, trials: list[Any], now: float | None = None) -> str:
        """Trials ended of all, running, still to start, best so far, rate and ETA."""
        now = time.monotonic() if now is None else now
        status = [t.status for t in trials]
        for t, st in zip(trials, status, strict=True):  # a restored phase's best too (this callback starts afresh)
            if st == "TERMINATED":
                self._update_best(t, t.last_result or {})
        running = status.count("RUNNING")
        errored = status.count("ERROR")
        ended = [t for t, s in zip(trials, status, strict=True) if s == "TERMINATED"]
        stopped = sum(is_partial(t.last_result) for t in ended)
        n_ended = len(ended) + errored
        total = max(self.total or 0, len(trials))
        text = (f"{n_ended}/{total} trials ended ({len(ended) - stopped} finished, {stopped} stopped early, "
                f"{errored} errored), {running} running, {total - n_ended - running} to start | {self._best_text()}")
        if self._t0 is None:
            self._t0, self._ended0 = now, n_ended
        done, elapsed = n_ended - self._ended0, now - self._t0
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f" | {60 * rate:.1f} trials/min, ETA {_duration((total - n_ended) / rate)}"
        return text

    def _dir(self, trial: Any) -> Path:
        return Path(self.sweep_dir) / "trials" / self.phase / trial.trial_id

    def _best_text(self) -> str:
        return f"best {self.metric} {self._best[0]:.4f} ({self._best[1]})" if self._best else "best -"

    def _update_best(self, trial: Any, result: dict[str, Any]) -> bool:
        """Whether ``result`` is a new best (only whole task sequences compete)."""
        v = result.get(self.metric)
        if v is None or result.get("tasks_completed") != result.get("num_tasks"):
            return False
        if self._best is None or (v > self._best[0] if self.mode == "max" else v < self._best[0]):
            self._best = (float(v), trial.trial_id)
            return True
        return False

    # ---- Tune hooks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._t0 is None:
            self.status(trials)  # the rate counts from here
        if not self._per_trial():
            return
        from sweeps.trainable import params_of

        params = params_of(trial.config, self.candidates)
        seed = trial.config.get("seed")
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in params.items())
        if "candidate" in trial.config:
            base = bool((self.candidates or [])[trial.config["candidate"]].get("base"))
        else:
            base = self.base_point is not None and params == self.base_point
        self._print(f"{trial.trial_id} start  {'(base config) ' if base else ''}{shown}"
                    f"{f' seed={seed}' if seed is not None else ''}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._update_best(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        self._update_best(trial, r)  # Tune passed this result to on_trial_result already
        best = self._best is not None and self._best[1] == trial.trial_id
        # only a real scheduler stops a trial early (an interrupt never gets here: its trials resume)
        stopped = self.scheduler not in ("none", "") and mark_stopped(self._dir(trial), r, by=self.scheduler,
                                                                      metric=self.metric)
        if not self._per_trial():
            if best:
                self._print(f"{trial.trial_id} new best  ACC {100 * r.get('avg_acc', float('nan')):.1f}% "
                            f"FM {100 * r.get('forgetting', float('nan')):.1f}% {self.metric} {r[self.metric]:.4f}"
                            f"{_shown(trial, self.candidates)}")
            return
        word = (f"stopped early by {self.scheduler} after task {r.get('tasks_completed', '?')}/{r.get('num_tasks', '?')}"
                if stopped else "finished")
        self._print(
            f"{trial.trial_id} {word}  ACC {100 * r.get('avg_acc', float('nan')):.1f}% "
            f"FM {100 * r.get('forgetting', float('nan')):.1f}% {self.metric} {r.get(self.metric, float('nan')):.4f} "
            f"({r.get('tasks_completed', '?')}/{r.get('num_tasks', '?')} tasks) | {self._counts(trials, trial)} | "
            f"{self._best_text()}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        counts = self._counts(trials, trial, 'ERROR') if self._per_trial() else self.status(trials)
        self._print(f"{trial.trial_id} ERROR  {error_reason(trial, self._dir(trial))} | {counts}")
        if self.enabled and getattr(trial, "path", None):  # the copy in the sweep dir outlives Ray's temp dir
            print(f"    traceback: {Path(trial.path) / 'error.txt'}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        self._print(f"{trial.trial_id} failed, retrying from task {r.get('tasks_completed', 0)} checkpoint")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            if self._last:
                self._print(self.status(trials, now) if not self._per_trial() else
                            f"{self._counts(trials)} | {self._best_text()}")
            self._last = now

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self._per_trial():
            self._print(self.status(trials))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _shown(trial: Any, candidates: list[dict[str, Any]] | None) -> str:
    from sweeps.trainable import params_of

    params = params_of(trial.config, candidates)
    return "  " + ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in params.items()) if params else ""


def _duration(seconds: float) -> str:
    """12s, 14m, 1h36m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{round(s / 60)}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
