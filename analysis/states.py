"""What became of each trial, said plainly: finished, stopped early, errored or unfinished.

A trial directory tells its own story through the files in it, so the answer survives a
driver crash and ``pah sweep --resume``, and ``pah analyze`` needs nothing but the disk:

- ``result.json``: **finished** (the whole task sequence);
- ``stopped.json``: **stopped early** by the sweep's scheduler (ASHA), after some task;
  the sweep driver writes it when Tune ends a trial before its last task;
- ``error.json`` (written by the sweep's trainable when ``run_trial`` raised): **errored**,
  with the first line of the error; unless the trial trained further after that error
  (a retry under way when everything was killed), which makes it unfinished;
- a checkpoint (``checkpoint/state.pt``) or a started sweep trial (``params.json`` and
  ``log.txt``) and none of the above: **unfinished**, i.e. killed or still running;
  ``pah train`` on the same directory or ``pah sweep --resume`` continues it;
- a sweep trial (``SWEEP/trials/PHASE/ID``) that would be unfinished but that Tune's saved
  experiment (``SWEEP/tune/PHASE/experiment_state-*.json``, the one a restore starts from)
  does not know: **orphaned**. It started after Tune's last snapshot and then the driver was
  killed (SIGKILL, a second SIGTERM): a restore cannot continue it (Tune samples another
  trial in its place) and leaves it alone, so it is never called resumable. Its detail says
  what it holds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = [
    "TrialState",
    "TrialStatus",
    "trial_status",
    "find_trial_dirs",
    "scan",
    "describe",
    "STOPPED",
    "ERROR",
    "RESULT",
    "known_trials",
]

RESULT = "result.json"
#: the sweep driver's marker for a trial the scheduler ended early (see sweeps.progress)
STOPPED = "stopped.json"
#: the sweep trainable's record of an exception (see sweeps.trainable)
ERROR = "error.json"
CHECKPOINT = Path("checkpoint") / "state.pt"
META = Path("checkpoint") / "meta.json"


class TrialState(str, Enum):
    FINISHED = "finished"
    STOPPED = "stopped early"
    ERRORED = "errored"
    UNFINISHED = "unfinished"
    ORPHANED = "orphaned"


@dataclass(frozen=True)
class TrialStatus:
    """One trial directory's state, with what a person needs to know about it."""

    path: Path
    state: TrialState
    detail: str = ""  # stopped: "by asha after task 2/5"; errored: the error's first line; unfinished: progress
    tasks_done: int | None = None
    num_tasks: int | None = None
    scheduler: str = ""  # stopped: who stopped it (asha)

    @property
    def phase(self) -> str:
        """``search`` / ``confirm`` for a sweep trial (``SWEEP/trials/PHASE/ID``), else ''."""
        parts = self.path.parts
        return parts[-2] if len(parts) >= 3 and parts[-3] == "trials" else ""

    def sentence(self) -> str:
        """``stopped early by asha after task 2/5``, ``errored: ValueError: ...``, ``unfinished (...)``."""
        if self.state is TrialState.STOPPED:
            return f"stopped early {self.detail}"
        if self.state is TrialState.ERRORED:
            return f"errored: {self.detail}"
        if self.state is TrialState.UNFINISHED:
            return f"unfinished ({self.detail})"
        if self.state is TrialState.ORPHANED:
            return f"orphaned ({self.detail})"
        return "finished"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def trial_status(d: str | Path) -> TrialStatus:
    """The state of the trial in directory ``d`` (see the module docstring for the rules)."""
    d = Path(d)
    if (d / RESULT).is_file():
        return TrialStatus(d, TrialState.FINISHED)
    meta = _json(d / META) or {}
    done = _int(meta.get("tasks_completed"))
    stopped = _json(d / STOPPED)
    if stopped is not None:
        k, T = _int(stopped.get("tasks_completed")), _int(stopped.get("num_tasks"))
        by = str(stopped.get("by") or "the scheduler")
        at = f" after task {k}/{T}" if k is not None and T is not None else (f" after task {k}" if k is not None else "")
        return TrialStatus(d, TrialState.STOPPED, f"by {by}{at}", k, T, scheduler=by)
    err = _json(d / ERROR)
    if err is not None:
        at_error = _int(err.get("tasks_done"))
        if not (done is not None and at_error is not None and done > at_error):  # else: retried past it, then killed
            kind, msg = str(err.get("type") or "").strip(), first_line(err.get("message") or "")
            text = f"{kind}: {msg}" if kind and msg else (kind or msg or "unknown error")
            return TrialStatus(d, TrialState.ERRORED, text, at_error)
    known = _known_to_sweep(d)
    if known is not None and d.name not in known:
        holds = ", ".join(sorted(p.name for p in d.iterdir())) if d.is_dir() else "nothing"
        return TrialStatus(d, TrialState.ORPHANED, f"unknown to Tune's saved experiment, which a resume restores, "
                                                   f"so left alone; it holds {holds}", done)
    progress = f"{done} task(s) done, resumable" if done is not None else "killed or still running; resumable"
    return TrialStatus(d, TrialState.UNFINISHED, progress, done)


_KNOWN: dict[str, tuple[tuple[str, int, int], set[str]]] = {}


def known_trials(exp_dir: str | Path) -> set[str] | None:
    """The trial ids in the newest complete experiment state of Tune's experiment dir ``exp_dir``
    (``sweeps.snapshot`` keeps a good copy in ``.pah-snapshot/``); None when there is none to read."""
    exp_dir = Path(exp_dir)
    for d in (exp_dir, exp_dir / ".pah-snapshot"):
        states = sorted(d.glob("experiment_state-*.json"))
        if not states:
            continue
        try:
            st = states[-1].stat()
            key = (str(states[-1]), st.st_mtime_ns, st.st_size)
            cached = _KNOWN.get(str(d))
            if cached is not None and cached[0] == key:
                return cached[1]
            ids = {str(json.loads(entry[0])["trial_id"]) for entry in json.loads(states[-1].read_text())["trial_data"]}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue  # being rewritten, or broken: its good copy
        _KNOWN[str(d)] = (key, ids)
        return ids
    return None


def _known_to_sweep(d: Path) -> set[str] | None:
    """For a sweep trial dir (SWEEP/trials/PHASE/ID), the trials Tune's saved experiment of PHASE knows."""
    sweep = d.parent.parent.parent
    if d.parent.parent.name != "trials" or not (sweep / "sweep.json").is_file():
        return None
    exp = sweep / "tune" / d.parent.name
    return known_trials(exp) if exp.is_dir() else None


def _is_trial_dir(d: Path) -> bool:
    return (
        (d / CHECKPOINT).is_file()
        or (d / STOPPED).is_file()
        or (d / ERROR).is_file()
        or ((d / "params.json").is_file() and (d / "log.txt").is_file())
    )


def find_trial_dirs(path: str | Path) -> list[Path]:
    """Every trial directory at or below ``path`` that has not finished (no result.json in it)."""
    return scan(path)[1]


def scan(path: str | Path) -> tuple[list[Path], list[Path]]:
    """(every result.json file, every unfinished trial directory) at or below ``path``, in one walk."""
    import os

    path = Path(path)
    if path.is_file():
        return ([path] if path.name == RESULT else []), []
    results, trials = [], []
    marks = (STOPPED, ERROR)
    for root, dirs, files in os.walk(path):
        names = set(files)
        d = Path(root)
        if RESULT in names:
            results.append(d / RESULT)
        elif (any(m in names for m in marks) or {"params.json", "log.txt"} <= names
              or (CHECKPOINT.parent.name in dirs and (d / CHECKPOINT).is_file())):
            trials.append(d)
    return sorted(results), sorted(trials)


def describe(statuses: Sequence[TrialStatus], *, limit: int = 5) -> list[str]:
    """Plain lines about the trials that did not finish.

    ``3 stopped early on purpose by the scheduler (asha): after task 2/5 x2, after task 4/5 x1``,
    one line per errored trial with its error, one for the unfinished ones.
    """
    lines = []
    stopped = [s for s in statuses if s.state is TrialState.STOPPED]
    if stopped:
        by = ", ".join(sorted({s.scheduler for s in stopped}))
        where = Counter(f"after task {s.tasks_done}/{s.num_tasks}" if s.tasks_done is not None else "at an unknown task"
                        for s in stopped)
        shown = ", ".join(f"{k} x{n}" for k, n in sorted(where.items()))
        lines.append(f"{len(stopped)} stopped early on purpose by the scheduler ({by}): {shown}")
    errored = [s for s in statuses if s.state is TrialState.ERRORED]
    if errored:
        lines.append(f"{len(errored)} errored:")
        lines += [f"  {s.path}: {s.detail}" for s in errored[:limit]]
        if len(errored) > limit:
            lines.append(f"  ... and {len(errored) - limit} more")
    unfinished = [s for s in statuses if s.state is TrialState.UNFINISHED]
    if unfinished:
        shown = ", ".join(str(s.path) for s in unfinished[:limit]) + (", ..." if len(unfinished) > limit else "")
        lines.append(f"{len(unfinished)} unfinished (killed or still running; `pah sweep --resume` or `pah train` "
                     f"continues them): {shown}")
    orphaned = [s for s in statuses if s.state is TrialState.ORPHANED]
    if orphaned:
        lines.append(f"{len(orphaned)} orphaned (unknown to their sweep's saved Tune experiment: never resumed, "
                     f"left alone):")
        lines += [f"  {s.path}: {s.detail}" for s in orphaned[:limit]]
        if len(orphaned) > limit:
            lines.append(f"  ... and {len(orphaned) - limit} more")
    return lines
