"""What a sweep directory says about itself: its spec, phases, candidates, base config and trials.

``pah sweep`` keeps ``SWEEP/sweep.json`` (see ``sweeps.driver``); this module only reads it,
so ``pah analyze`` and the HTML report need neither Ray nor Optuna.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.compare import BaseComparison, compare_with_base
from analysis.report import fmt_field, short_names
from analysis.states import TrialState, TrialStatus, trial_status

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SweepInfo", "find_sweeps", "read_sweep", "sweep_trials", "phase_lines", "sweep_summary", "summary_lines",
           "STATE"]

STATE = "sweep.json"


@dataclass
class SweepInfo:
    dir: Path
    state: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        return self.state.get("spec") or {}

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.dir.name)

    @property
    def base(self) -> dict[str, Any] | None:
        """``{"config_id", "values", "point", "outside"}`` (sweeps started before this existed: None)."""
        return self.state.get("base")

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return list((self.state.get("phases") or {}).get("confirm", {}).get("candidates") or [])

    @property
    def metric(self) -> tuple[str, str]:
        """(the selection metric, its mode): the spec's first."""
        m, mode = self.spec.get("metric", "val_avg_acc"), self.spec.get("mode", "max")
        return (m[0] if isinstance(m, list) else m), (mode[0] if isinstance(mode, list) else mode)

    def seconds(self) -> dict[str, float]:
        """Wall time of each phase that ran (as the driver measured it)."""
        phases = self.state.get("phases") or {}
        return {p: float(v["seconds"]) for p, v in phases.items() if isinstance(v, dict) and "seconds" in v}

    def describe_configs(self) -> dict[str, str]:
        """config_id -> ``lr=0.002742 head_lr=0.001 (base config)`` for the candidates and the base."""
        params = {c["config_id"]: c.get("params") or {} for c in self.candidates}
        if self.base:
            params.setdefault(self.base["config_id"], self.base.get("values") or {})
        names = short_names(sorted({k for p in params.values() for k in p}))
        out = {cid: " ".join(f"{names[k]}={fmt_field(v)}" for k, v in p.items()) for cid, p in params.items()}
        if self.base:
            cid = self.base["config_id"]
            out[cid] = (out.get(cid, "") + " (the spec's base config)").strip()
        return out

    @property
    def confirms(self) -> bool:
        """Whether the sweep has a confirm phase (its table then holds the confirmed configs only)."""
        return bool((self.spec.get("confirm") or {}).get("top_k"))

    def _inside(self, frame: pd.DataFrame) -> list[bool]:
        root = self.dir.resolve()
        return [Path(p).resolve().is_relative_to(root) for p in frame["path"]]

    def table_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` that the sweep's table holds: the confirmed runs, i.e. the confirm
        phase's trials and, when the search seed is a confirm seed, the candidates' search trials
        (their result is reused: ``sweeps.phases.confirm_jobs``); every search trial when the sweep
        has no confirm phase. A study's table (analysis.study_table) holds the same runs."""
        confirm = (self.state.get("phases") or {}).get("confirm") or {}
        seeds = list((self.spec.get("confirm") or {}).get("seeds") or [])
        reused = {c["config_id"] for c in self.candidates if c.get("dir")} if confirm.get("search_seed") in seeds else set()
        keep = []
        for inside, path, cid in zip(self._inside(frame), frame["path"], frame["config_id"], strict=True):
            phase = _phase(Path(path))
            keep.append(inside and ((phase == "search" and (cid in reused or not self.confirms))
                                    or (phase == "confirm" and self.confirms)))
        return frame[keep].reset_index(drop=True)

    def comparison(self, frame: pd.DataFrame) -> BaseComparison | None:
        """The best confirmed config against the base, from the rows of ``frame`` inside this sweep."""
        if not self.base:
            return None
        inside = frame[self._inside(frame)]
        cands = [c["config_id"] for c in self.candidates]
        if not cands:  # no confirm phase: every searched config competes on its one seed
            cands = list(dict.fromkeys(inside["config_id"]))
        metric, mode = self.metric
        return compare_with_base(inside, candidates=cands, base_id=self.base["config_id"], metric=metric, mode=mode)


def _phase(result: Path) -> str:
    """``search`` / ``confirm`` for a sweep trial's result (``SWEEP/trials/PHASE/ID/result.json``), else ''."""
    parts = result.parts
    return parts[-3] if len(parts) >= 4 and parts[-4] == "trials" else ""


def read_sweep(path: str | Path) -> SweepInfo | None:
    """The sweep in directory ``path`` (None if it is not one, or its sweep.json is unreadable)."""
    p = Path(path)
    try:
        state = json.loads((p / STATE).read_text())
    except (OSError, ValueError):
        return None
    return SweepInfo(p, state) if isinstance(state, dict) else None


def find_sweeps(paths: Iterable[str | Path]) -> list[SweepInfo]:
    """The sweeps among ``paths`` (each given directory that holds a sweep.json)."""
    found = [read_sweep(p) for p in paths if Path(p).is_dir()]
    return [s for s in found if s is not None]


def sweep_trials(sweep_dir: str | Path) -> list[TrialStatus]:
    """The state of every trial of a sweep, search phase first."""
    root = Path(sweep_dir) / "trials"
    phases = sorted((d for d in root.glob("*") if d.is_dir()), key=lambda d: (d.name != "search", d.name))
    return [trial_status(t) for ph in phases for t in sorted(ph.iterdir()) if t.is_dir()]


def phase_lines(statuses: Iterable[TrialStatus]) -> list[str]:
    """``search: 6 trials: 3 finished, 3 stopped early by asha (after task 2/5 x2, ...)`` per phase, then errors."""
    by_phase: dict[str, list[TrialStatus]] = {}
    for s in statuses:
        by_phase.setdefault(s.phase or "trials", []).append(s)
    lines, errors = [], []
    for phase, group in by_phase.items():
        n = Counter(s.state for s in group)
        parts = [f"{n[TrialState.FINISHED]} finished"]
        stopped = [s for s in group if s.state is TrialState.STOPPED]
        if stopped:
            where = Counter(f"after task {s.tasks_done}/{s.num_tasks}" for s in stopped)
            by = ", ".join(sorted({s.scheduler for s in stopped}))
            parts.append(f"{len(stopped)} stopped early by {by} ({', '.join(f'{k} x{v}' for k, v in sorted(where.items()))})")
        if n[TrialState.ERRORED]:
            parts.append(f"{n[TrialState.ERRORED]} errored")
        if n[TrialState.UNFINISHED]:
            parts.append(f"{n[TrialState.UNFINISHED]} unfinished (killed, resumable)")
        if n[TrialState.ORPHANED]:
            parts.append(f"{n[TrialState.ORPHANED]} orphaned (unknown to the saved Tune experiment, left alone)")
        lines.append(f"{phase}: {len(group)} trial(s): {', '.join(parts)}")
        errors += [f"  errored: {phase}/{s.path.name}: {s.detail}" for s in group if s.state is TrialState.ERRORED]
        errors += [f"  orphaned: {phase}/{s.path.name}: {s.detail}" for s in group if s.state is TrialState.ORPHANED]
    return lines + errors


def sweep_summary(sweep_dir: str | Path, frame: pd.DataFrame | None = None) -> list[str]:
    """The lines the sweep prints under its table: trial states, phase times, best vs base.

    ``frame``: the sweep's results (``load_results``), loaded here when not given."""
    info = read_sweep(sweep_dir)
    if info is None:
        return []
    if frame is None:
        from analysis.load import load_results
        from pah.errors import UserError

        try:
            frame = load_results([info.dir]).frame
        except UserError:
            frame = None
    return summary_lines(info, sweep_trials(info.dir), None if frame is None else info.comparison(frame),
                         compared=frame is not None)


def summary_lines(info: SweepInfo, statuses: Iterable[TrialStatus], comparison: BaseComparison | None, *,
                  compared: bool = True) -> list[str]:
    """:func:`sweep_summary`'s lines from what was read already: the trials' states, the comparison
    (``compared``: False when there was no result to compare, which says nothing about it)."""
    lines = ["trials:"] + [f"  {line}" for line in phase_lines(statuses)]
    secs = info.seconds()
    if secs:
        lines.append("time: " + ", ".join(f"{p} {s:.0f} s" for p, s in secs.items()))
    if comparison is not None:
        lines += comparison.lines(info.describe_configs())
    elif compared and info.base:
        lines.append("best vs base config: the base config has no finished result in this sweep")
    return lines
