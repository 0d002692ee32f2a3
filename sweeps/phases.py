"""A sweep's layout and its two phases' hand-over: the names of its files, the Tune search space
of each phase, and which search trials go on to the confirm phase.

Below the driver (sweeps/driver.py), which runs the phases, and below what the driver uses that
needs these too (sweeps/owner.py: the sweep's state file; sweeps/study.py and
sweeps/multisearch.py: a study's candidates and spaces), so that none of them imports the driver.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pah.io import read_json

if TYPE_CHECKING:
    from sweeps.schema import Spec

__all__ = ["DEFAULT_STORAGE", "STATE", "REPORT", "PHASES", "confirm_jobs", "select_candidates", "read_params"]

DEFAULT_STORAGE = Path("runs") / "sweeps"
STATE = "sweep.json"
REPORT = "report.html"
PHASES = ("search", "confirm")


def read_params(out: Path) -> dict[str, Any]:
    """A trial dir's params.json: what its trial was given (sweeps/trainable.py writes it)."""
    return json.loads((out / "params.json").read_text())


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


def select_candidates(sweep_dir: Path, spec: Spec, *, base: dict[str, Any] | None = None,
                      keep: Any = None) -> list[dict[str, Any]]:
    """The top-K distinct configs of phase 1 that finished the whole sequence, plus the base config.

    Single objective: sorted by the metric. Several: non-dominated fronts first, then the
    first metric within a front. ``base`` (see :func:`sweeps.search.base_point`): the base
    config is marked ``"base": True`` where it is among the top K, else appended, with the
    dir of its finished search trial if there is one (else ``"dir": None``: the confirm
    phase then runs it on the search seed too). ``keep``: a test of a result.json's contents, for the
    search trials to choose from (a study: one method's).
    """
    rows = []
    for d, res in _phase_results(sweep_dir, "search"):
        if keep is not None and not keep(res):
            continue
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
