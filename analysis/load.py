"""Find every ``result.json`` under sweep, experiment or trial directories: one tidy row per trial.

A sweep nests its trials several levels deep and may still be running, so loading is
forgiving about the files it finds and strict about the paths it is given: a path that
does not exist is bad input; a trial without a result is counted by its state (stopped
early by the scheduler, errored, unfinished: see :mod:`analysis.states`) and skipped; a
file that is not a schema-1 result is reported and skipped, and so is one whose ``acc_matrix``
is not T x T for its dataset's T tasks, lower-triangular with values in [0, 1], or whose
``metrics`` disagree with that matrix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.states import TrialState, TrialStatus, describe, scan, trial_status
from pah import metrics
from pah.config import flatten
from pah.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Results", "load_results", "records_frame", "parse_result", "RESULT", "METRICS", "VAL_METRICS",
           "REQUIRED_KEYS"]

RESULT = "result.json"
METRICS = ("avg_acc", "forgetting", "bwt")
#: the validation metrics a result may carry (what sweeps select on); per-trial values, never fields
VAL_METRICS = tuple(f"val_{m}" for m in METRICS)
REQUIRED_KEYS = ("schema", "method", "dataset", "seed", "config_id", "acc_matrix")
#: how far a result's ``metrics`` may be from what its ``acc_matrix`` gives (float rounding in JSON)
METRICS_TOLERANCE = 1e-6


@dataclass
class Results:
    """The tidy table of finished trials, and what was skipped on the way."""

    frame: pd.DataFrame
    finished: int = 0
    #: every trial directory without a result: stopped early, errored or unfinished
    trials: list[TrialStatus] = field(default_factory=list)
    malformed: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)

    def _with(self, state: TrialState) -> list[Path]:
        return [t.path for t in self.trials if t.state is state]

    @property
    def unfinished(self) -> list[Path]:
        """Killed or still running (resumable)."""
        return self._with(TrialState.UNFINISHED)

    @property
    def stopped(self) -> list[Path]:
        """Stopped early by the sweep's scheduler, on purpose."""
        return self._with(TrialState.STOPPED)

    @property
    def errored(self) -> list[Path]:
        return self._with(TrialState.ERRORED)

    def counts(self) -> dict[str, int]:
        return {
            "finished": self.finished,
            "stopped": len(self.stopped),
            "errored": len(self.errored),
            "unfinished": len(self.unfinished),
            "malformed": len(self.malformed),
            "duplicates": len(self.duplicates),
        }

    def notes(self) -> list[str]:
        """Human-readable lines about skipped files and trials without a result, for stderr."""
        lines = [f"warning: skipped {p}: {why}" for p, why in self.malformed]
        lines += [f"warning: skipped {p}: same config_id and seed as a result already loaded" for p in self.duplicates]
        if self.trials:
            lines.append(f"note: {len(self.trials)} trial(s) without a {RESULT}, not in the table:")
            lines += [f"  {line}" for line in describe(self.trials)]
        return lines


def parse_result(obj: Any) -> dict[str, Any]:
    """One result.json object -> one tidy row. Raises ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("schema") != 1:
        raise ValueError(f"foreign schema {obj.get('schema')!r} (expected 1)")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    if not isinstance(obj["seed"], int) or isinstance(obj["seed"], bool):
        raise ValueError(f"seed {obj['seed']!r} is not an integer")
    R = obj["acc_matrix"]
    _check_matrix(R, obj.get("config"), str(obj["dataset"]))
    # The metrics are functions of R (CONTRACT.md): recompute them, and refuse a copy that disagrees.
    summary = metrics.summarize(R)
    given = obj.get("metrics")
    if given is not None and not isinstance(given, dict):
        raise ValueError(f"metrics is {type(given).__name__}, not an object")
    for m in METRICS:
        v = (given or {}).get(m)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                              or not math.isclose(v, summary[m], rel_tol=0, abs_tol=METRICS_TOLERANCE)):
            raise ValueError(f"metrics.{m} is {v!r} but acc_matrix gives {summary[m]:.6g}")
    T = len(R)
    row: dict[str, Any] = {
        "method": str(obj["method"]),
        "dataset": str(obj["dataset"]),
        "config_id": str(obj["config_id"]),
        "seed": obj["seed"],
        "num_tasks": T,
        **summary,
    }
    for j in range(T):
        row[f"acc_t{j + 1}"] = float(R[T - 1][j])
    row["acc_matrix"] = [[None if v is None else float(v) for v in r] for r in R]
    val = obj.get("val_metrics")
    if isinstance(val, dict):  # reported by the trial (no validation matrix to recompute them from)
        for m in METRICS:
            v = val.get(m)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                row[f"val_{m}"] = float(v)
    timing = obj.get("timing") or {}
    if isinstance(timing, dict) and isinstance(timing.get("train_seconds"), (int, float)):
        row["train_seconds"] = float(timing["train_seconds"])
    env = obj.get("env")
    if isinstance(env, dict):  # for the report's environment section; a JSON string keeps the row flat
        row["env"] = json.dumps(env, sort_keys=True)
    config = obj.get("config") or {}
    if isinstance(config, dict):
        for k, v in flatten(config).items():
            if k != "seed":  # the seed is a row, not a hyperparameter
                row.setdefault(k, json.dumps(v) if isinstance(v, list) else v)  # lists: hashable for a group-by
    return row


def _check_matrix(R: Any, config: Any, dataset: str) -> None:
    """``R`` is T x T for the dataset's T tasks, lower-triangular (null above the diagonal), values in [0, 1].

    Raises ValueError saying what is wrong (a result written by `pah train` always passes)."""
    if not isinstance(R, list) or not R or not all(isinstance(r, list) for r in R):
        raise ValueError("acc_matrix is not a non-empty list of lists")
    T = len(R)
    lengths = sorted({len(r) for r in R})
    if lengths != [T]:
        raise ValueError(f"acc_matrix is not square: {T} rows of length {', '.join(map(str, lengths))}")
    for i, row in enumerate(R):
        for j, v in enumerate(row):
            if j > i:
                if v is not None:
                    raise ValueError(f"acc_matrix[{i}][{j}] is {v!r} above the diagonal (expected null)")
            elif v is None or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"acc_matrix[{i}][{j}] is {v!r}, not a finite number")
            elif not 0.0 <= v <= 1.0:
                raise ValueError(f"acc_matrix[{i}][{j}] is {v!r}, outside [0, 1]")
    expected = dataset_tasks((config or {}).get("data") if isinstance(config, dict) else None, dataset)
    if expected is not None and expected != T:
        raise ValueError(f"acc_matrix is {T}x{T} but {dataset} has {expected} tasks")


def dataset_tasks(data: Any, dataset: str) -> int | None:
    """The number of tasks of a result's dataset: ``data.num_tasks`` if the config sets it, else the
    benchmark's declared shape; None when it cannot be known (a dataset this version does not have)."""
    data = data if isinstance(data, dict) else {}
    n = data.get("num_tasks")
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    name = data.get("name", dataset)
    if name == "synthetic" and isinstance(data.get("shape_like"), str):
        name = data["shape_like"]
    return _declared_tasks(str(name))


def _declared_tasks(name: str) -> int | None:
    """The declared number of tasks of benchmark ``name`` (pah.conf.shapes: data, no torch)."""
    from pah.conf import SHAPES

    return SHAPES.get(name).num_tasks if name in SHAPES else None


def _candidates(path: Path) -> tuple[list[Path], list[Path]]:
    """(result files, trial dirs without a result) under one given path."""
    if path.is_file():
        return [path], []
    return scan(path)


def _canonical(p: Path, given: Path, resolved: Path) -> Path:
    """``p`` (found below ``given``) as a canonical path, without a resolve() per file."""
    try:
        return resolved / p.relative_to(given)
    except ValueError:
        return p.resolve()


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["method", "dataset", "config_id", "seed"], kind="stable").reset_index(drop=True)
    return frame


def load_results(paths: Iterable[str | Path], *, extra: Iterable[tuple[str, Any]] = ()) -> Results:
    """Load every result.json under ``paths`` (files or directories, searched recursively).

    ``extra`` holds already-parsed result objects with a label for messages (W&B runs).
    Raises UserError for a path that does not exist or when nothing loadable was found.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    rows: list[dict[str, Any]] = []
    res = Results(frame=None)  # type: ignore[arg-type]
    seen_files: set[Path] = set()
    seen_trials: set[Path] = set()
    seen_runs: set[tuple[str, int]] = set()

    def add(obj: Any, where: Path) -> None:
        try:
            row = parse_result(obj)
        except ValueError as e:
            res.malformed.append((where, str(e)))
            return
        key = (row["config_id"], row["seed"])
        if key in seen_runs:
            res.duplicates.append(where)
            return
        seen_runs.add(key)
        row["path"] = str(where)
        rows.append(row)

    for p in paths:
        files, trial_dirs = _candidates(p)
        base = p.resolve()
        for d in trial_dirs:
            key = _canonical(d, p, base)
            if key not in seen_trials:
                seen_trials.add(key)
                res.trials.append(trial_status(d))
        for f in files:
            key = _canonical(f, p, base)
            if key in seen_files:
                continue
            seen_files.add(key)
            try:
                obj = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                res.malformed.append((f, f"not readable JSON ({e})"))
                continue
            add(obj, f)
    for label, obj in extra:
        add(obj, Path(label))

    res.finished = len(rows)
    res.frame = records_frame(rows)
    if not rows:
        given = ", ".join(str(p) for p in paths) or "the given W&B project"
        c = res.counts()
        counts = (f"{c['stopped']} stopped early, {c['errored']} errored, {c['unfinished']} unfinished, "
                  f"{c['malformed']} malformed")
        raise UserError(f"{given}: no finished {RESULT} found ({counts})")
    return res
