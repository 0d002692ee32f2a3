"""A concise live view of a Tune phase: one line per trial event, a status line now and then.

Tune's own tables are switched off (``verbose=0``); this callback prints, to stdout:
``[search] 3f2a_00001 done  ACC 93.1% FM 2.0% val_avg_acc 0.934 (5/5 tasks) | 1 running, 3 done, 0 errored | best 0.951``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = ["ConciseProgress", "error_reason"]


def error_reason(trial: Any, out_dir: Path | None = None) -> str:
    """The last line of a failed trial's error (Ray's error file, else the trainable's error.json)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    if out_dir is not None and (out_dir / "error.json").exists():
        try:
            err = json.loads((out_dir / "error.json").read_text())
            return f"{err['type']}: {err['message']}"[:300]
        except (OSError, ValueError, KeyError):
            pass
    return "unknown error"


class ConciseProgress(Callback):
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
    ):
        self.candidates = candidates
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

    def _counts(self, trials: list[Any]) -> str:
        status = [t.status for t in trials]
        return (
            f"{status.count('RUNNING')} running, {status.count('PENDING') + status.count('PAUSED')} pending, "
            f"{status.count('TERMINATED')} done, {status.count('ERROR')} errored"
        )

    def _best_text(self) -> str:
        return f"best {self.metric} {self._best[0]:.4f} ({self._best[1]})" if self._best else "best -"

    def _update_best(self, trial: Any, result: dict[str, Any]) -> None:
        v = result.get(self.metric)
        if v is None or result.get("tasks_completed") != result.get("num_tasks"):
            return  # only whole task sequences compete
        if self._best is None or (v > self._best[0] if self.mode == "max" else v < self._best[0]):
            self._best = (float(v), trial.trial_id)

    # ---- Tune hooks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from sweeps.trainable import params_of

        params = params_of(trial.config, self.candidates)
        seed = trial.config.get("seed")
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        self._print(f"{trial.trial_id} start  {shown}{f' seed={seed}' if seed is not None else ''}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._update_best(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        self._update_best(trial, r)
        finished = r.get("tasks_completed") == r.get("num_tasks")
        word = "done   " if finished else "stopped"
        self._print(
            f"{trial.trial_id} {word} ACC {100 * r.get('avg_acc', float('nan')):.1f}% "
            f"FM {100 * r.get('forgetting', float('nan')):.1f}% {self.metric} {r.get(self.metric, float('nan')):.4f} "
            f"({r.get('tasks_completed', '?')}/{r.get('num_tasks', '?')} tasks) | {self._counts(trials)} | {self._best_text()}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        out = Path(self.sweep_dir) / "trials" / self.phase / trial.trial_id
        self._print(f"{trial.trial_id} ERROR  {error_reason(trial, out)} | {self._counts(trials)}")
        if self.enabled and getattr(trial, "path", None):  # the copy in the sweep dir outlives Ray's temp dir
            print(f"    traceback: {Path(trial.path) / 'error.txt'}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        self._print(f"{trial.trial_id} failed, retrying from task {r.get('tasks_completed', 0)} checkpoint")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            if self._last:
                self._print(f"{self._counts(trials)} | {self._best_text()}")
            self._last = now


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
