"""A plain seed-averaged table from result.json files (used until ``analysis`` is installed)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["plain_table", "collect_results"]


def collect_results(dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Every result.json under the given dirs (or the files themselves), once per (config_id, seed)."""
    seen, out = set(), []
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else ([d / "result.json"] if (d / "result.json").exists() else sorted(d.rglob("result.json")))
        for f in files:
            try:
                res = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            key = (res.get("config_id"), res.get("seed"))
            if key not in seen:
                seen.add(key)
                out.append(res)
    return out


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = 100 * statistics.fmean(xs)
    return f"{m:.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{m:.2f}"


def plain_table(dirs: Iterable[Path], *, params_of: dict[str, dict[str, Any]] | None = None) -> str:
    """Group by config_id: method, dataset, seeds, ACC and forgetting (mean ± sample std, %), params."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in collect_results(dirs):
        groups.setdefault(res["config_id"], []).append(res)
    rows = []
    for cid, rs in groups.items():
        acc = [r["metrics"]["avg_acc"] for r in rs]
        fm = [r["metrics"]["forgetting"] for r in rs]
        params = (params_of or {}).get(cid, {})
        rows.append((
            statistics.fmean(acc),
            [rs[0]["method"], rs[0]["dataset"], cid, str(len(rs)), _mean_std(acc), _mean_std(fm),
             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())],
        ))
    rows.sort(key=lambda r: r[0], reverse=True)
    header = ["method", "dataset", "config_id", "seeds", "ACC %", "forgetting %", "params"]
    table = [header] + [r[1] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + ("" if rows else "\n(no finished trials)")
