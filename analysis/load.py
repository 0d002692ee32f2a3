"""Find every ``result.json`` under sweep, experiment or trial directories: one tidy row per trial.

A sweep nests its trials several levels deep and may still be running, so loading is
forgiving about the files it finds and strict about the paths it is given: a path that
does not exist is bad input; a directory with a checkpoint but no result is an unfinished
trial (counted, skipped); a file that is not a schema-1 result is reported and skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pah import metrics
from pah.config import flatten
from pah.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Results", "load_results", "records_frame", "parse_result", "RESULT", "METRICS", "REQUIRED_KEYS"]

RESULT = "result.json"
#: the unfinished trial's marker, relative to its directory (pah.trial.CHECKPOINT)
CHECKPOINT = Path("checkpoint") / "state.pt"
METRICS = ("avg_acc", "forgetting", "bwt")
REQUIRED_KEYS = ("schema", "method", "dataset", "seed", "config_id", "acc_matrix")


@dataclass
class Results:
    """The tidy table of finished trials, and what was skipped on the way."""

    frame: pd.DataFrame
    finished: int = 0
    unfinished: list[Path] = field(default_factory=list)
    malformed: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "finished": self.finished,
            "unfinished": len(self.unfinished),
            "malformed": len(self.malformed),
            "duplicates": len(self.duplicates),
        }

    def notes(self) -> list[str]:
        """Human-readable lines about skipped files, for stderr."""
        lines = [f"warning: skipped {p}: {why}" for p, why in self.malformed]
        lines += [f"warning: skipped {p}: same config_id and seed as a result already loaded" for p in self.duplicates]
        if self.unfinished:
            lines.append(f"note: {len(self.unfinished)} unfinished trial(s) skipped (checkpoint but no {RESULT})")
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
    if not isinstance(R, list) or not all(isinstance(r, list) for r in R):
        raise ValueError("acc_matrix is not a list of lists")
    for row in R:
        for v in row:
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
                raise ValueError(f"acc_matrix holds {v!r}, not a finite number")
    # The metrics are functions of R (CONTRACT.md): recompute them rather than trust the copy.
    summary = metrics.summarize(R)  # ValueError on a ragged or incomplete matrix
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
    row["acc_matrix"] = [[None if v is None else float(v) for v in r[:T]] + [None] * (T - len(r)) for r in R]
    timing = obj.get("timing") or {}
    if isinstance(timing, dict) and isinstance(timing.get("train_seconds"), (int, float)):
        row["train_seconds"] = float(timing["train_seconds"])
    config = obj.get("config") or {}
    if isinstance(config, dict):
        for k, v in flatten(config).items():
            if k != "seed":  # the seed is a row, not a hyperparameter
                row.setdefault(k, json.dumps(v) if isinstance(v, list) else v)  # lists: hashable for a group-by
    return row


def _candidates(path: Path) -> tuple[list[Path], list[Path]]:
    """(result files, unfinished trial dirs) under one given path."""
    if path.is_file():
        return [path], []
    results = sorted(p for p in path.rglob(RESULT) if p.is_file())
    done_dirs = {p.parent for p in results}
    unfinished = sorted(
        {p.parent.parent for p in path.rglob(CHECKPOINT.name) if p.parent.name == CHECKPOINT.parent.name}
        - done_dirs
    )
    return results, unfinished


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
    seen_unfinished: set[Path] = set()
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
        files, unfinished = _candidates(p)
        for d in unfinished:
            if d.resolve() not in seen_unfinished:
                seen_unfinished.add(d.resolve())
                res.unfinished.append(d)
        for f in files:
            if f.resolve() in seen_files:
                continue
            seen_files.add(f.resolve())
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
        counts = f"{len(res.unfinished)} unfinished, {len(res.malformed)} malformed"
        raise UserError(f"{given}: no finished {RESULT} found ({counts})")
    return res
