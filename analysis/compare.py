"""Did the sweep beat its own starting point? The best confirmed config against the base config.

Pure functions of the tidy table (``load_results(...).frame``): the best config is the
candidate with the best seed mean of the sweep's selection metric (a validation metric,
so the test set never chooses), and each test metric is compared between the two over
their seeds: the difference of the means and Welch's two-sided p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from analysis.load import METRICS
from analysis.stats import welch_p

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MetricDiff", "BaseComparison", "compare_with_base", "NAMES", "ALPHA"]

NAMES = {"avg_acc": "ACC", "forgetting": "Forgetting", "bwt": "BWT"}
#: which direction is better for each test metric
HIGHER_IS_BETTER = {"avg_acc": True, "forgetting": False, "bwt": True}
#: the significance level the verdict uses
ALPHA = 0.05


@dataclass(frozen=True)
class MetricDiff:
    metric: str
    best_mean: float
    base_mean: float
    p: float  # NaN where Welch's test is undefined (fewer than 2 seeds a side, no variance)

    @property
    def diff(self) -> float:
        return self.best_mean - self.base_mean

    @property
    def best_is_better(self) -> bool:
        return self.diff > 0 if HIGHER_IS_BETTER[self.metric] else self.diff < 0


@dataclass(frozen=True)
class BaseComparison:
    best_id: str
    base_id: str
    selected_by: str  # the column the best config was chosen on (e.g. val_avg_acc)
    headline: str  # the test metric the verdict is about (avg_acc for val_avg_acc)
    best_n: int
    base_n: int
    diffs: tuple[MetricDiff, ...]

    @property
    def best_is_base(self) -> bool:
        return self.best_id == self.base_id

    def diff(self, metric: str) -> MetricDiff:
        return next(d for d in self.diffs if d.metric == metric)

    def verdict(self) -> str:
        """One sentence a reviewer can act on."""
        if self.best_is_base:
            return "the base config is the best confirmed config: the search found nothing better than not sweeping"
        d = self.diff(self.headline)
        name, pp = NAMES[self.headline], f"{100 * d.diff:+.2f} pp"
        p = "n/a" if math.isnan(d.p) else f"{d.p:.3g}"
        if d.best_is_better and d.p < ALPHA:
            return f"the search beat the base config: {name} {pp} (Welch p={p})"
        if d.best_is_better:
            return f"the best config is ahead of the base config by {name} {pp}, but not significantly (Welch p={p})"
        if d.p < ALPHA:
            return f"the search lost to the base config: {name} {pp} (Welch p={p}); prefer the base config"
        return f"the best config is behind the base config by {name} {pp}, not significantly (Welch p={p})"

    def lines(self, describe: dict[str, str] | None = None) -> list[str]:
        """A small text table: the two configs, each test metric with difference and p, and the verdict."""
        describe = describe or {}
        lines = [f"best vs base config over {self.best_n} vs {self.base_n} seed(s) "
                 f"(best: the highest mean {self.selected_by} among the confirmed configs):"]
        if self.best_is_base:
            lines.append(f"  best = base  {self.base_id}  {describe.get(self.base_id, '')}".rstrip())
        else:
            lines.append(f"  best  {self.best_id}  {describe.get(self.best_id, '')}".rstrip())
            lines.append(f"  base  {self.base_id}  {describe.get(self.base_id, '')}".rstrip())
            for d in self.diffs:
                p = "n/a" if math.isnan(d.p) else f"{d.p:.3g}"
                lines.append(f"  {NAMES[d.metric] + ' %':<13} {100 * d.best_mean:6.2f} vs {100 * d.base_mean:6.2f}"
                             f"   Δ {100 * d.diff:+6.2f} pp   Welch p={p}")
        lines.append(f"  verdict: {self.verdict()}")
        return lines


def _seed_values(frame: pd.DataFrame, cid: str, column: str) -> list[float]:
    if column not in frame.columns:
        return []
    rows = frame[frame["config_id"] == cid][column]
    return [float(v) for v in rows if v is not None and not math.isnan(float(v))]


def compare_with_base(
    frame: pd.DataFrame,
    *,
    candidates: Sequence[str],
    base_id: str,
    metric: str = "val_avg_acc",
    mode: str = "max",
) -> BaseComparison | None:
    """Compare the best of ``candidates`` (config_ids; the base may be one) with ``base_id``.

    The best is chosen on ``metric`` (falling back to its test twin when a candidate has no
    validation metric). None when the base or every candidate has no finished result.
    """
    ids = [c for c in dict.fromkeys([*candidates, base_id]) if _seed_values(frame, c, "avg_acc")]
    if base_id not in ids:
        return None
    headline = metric.removeprefix("val_")
    selected_by = metric if all(_seed_values(frame, c, metric) for c in ids) else headline

    def mean(cid: str, column: str) -> float:
        v = _seed_values(frame, cid, column)
        return sum(v) / len(v)

    sign = 1.0 if mode == "max" else -1.0
    best = max(ids, key=lambda c: (sign * mean(c, selected_by), c == base_id))  # a tie goes to the base
    diffs = tuple(
        MetricDiff(m, mean(best, m), mean(base_id, m), welch_p(_seed_values(frame, best, m), _seed_values(frame, base_id, m)))
        for m in METRICS
    )
    return BaseComparison(
        best_id=best, base_id=base_id, selected_by=selected_by, headline=headline if headline in METRICS else "avg_acc",
        best_n=len(_seed_values(frame, best, "avg_acc")), base_n=len(_seed_values(frame, base_id, "avg_acc")), diffs=diffs,
    )
