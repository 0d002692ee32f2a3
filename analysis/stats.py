"""Seed averaging: group trials, then mean, sample std, Student-t 95% CI and Welch p-values.

One row per group. Undefined statistics (std and CI with one seed, a p-value against a
group with one seed or zero variance on both sides) are NaN here and ``null`` in JSON.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from analysis.load import METRICS, VAL_METRICS
from pah.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Summary", "aggregate", "DEFAULT_BY", "resolve_by", "ci95_halfwidth", "welch_p"]

#: config_id determines method and dataset; they are shown because people read them
DEFAULT_BY = ("method", "dataset", "config_id")
#: columns of the tidy table that are per-trial values, not grouping fields
_VALUE_COLUMNS = {"seed", "path", "acc_matrix", "num_tasks", "train_seconds", "env", *METRICS, *VAL_METRICS}


@dataclass
class Summary:
    """The aggregated table plus what it was grouped by."""

    table: pd.DataFrame  # one row per group: group fields, extra fields, n, m_mean, m_std, m_ci95[, m_p]
    by: list[str]  # the group-by fields
    extra: list[str]  # hyperparameters that differ between groups (default grouping only), shown alongside
    baseline: str | None = None

    @property
    def fields(self) -> list[str]:
        return [*self.by, *self.extra]

    def label(self, i: int) -> str:
        """A short name for group ``i``: its group fields joined by ' / '."""
        row = self.table.iloc[i]
        return " / ".join(str(row[f]) for f in self.by)

    def small_groups(self) -> list[str]:
        return [self.label(i) for i in range(len(self.table)) if int(self.table.iloc[i]["n"]) < 3]


def ci95_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the two-sided 95% Student-t interval of the mean; NaN for n < 2."""
    n = len(values)
    if n < 2:
        return math.nan
    import numpy as np

    sd = float(np.std(values, ddof=1))
    return _t975(n - 1) * sd / math.sqrt(n)


@functools.cache
def _t975(dof: int) -> float:
    """The 97.5% quantile of Student's t (one per sample size: a sweep of 1,000 configs asks thousands of times)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value; NaN where it is undefined (n < 2, or no variance anywhere)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy warns and returns NaN
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def resolve_by(frame: pd.DataFrame, by: str | Sequence[str] | None) -> list[str]:
    """Validate ``--by``: a comma list of columns of the tidy table."""
    if by is None:
        return list(DEFAULT_BY)
    fields = [f.strip() for f in (by.split(",") if isinstance(by, str) else by)]
    if not fields or any(not f for f in fields):
        raise UserError(f"--by {by!r}: expected FIELD[,FIELD...]")
    valid = [c for c in frame.columns if c not in _VALUE_COLUMNS and not c.startswith("acc_t")]
    for f in fields:
        if f not in valid:
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            raise UserError(f"--by {f!r}: unknown field; valid fields: {shown}")
    return fields


def _varying(frame: pd.DataFrame, by: list[str]) -> list[str]:
    """Hyperparameters whose value differs between trials: what tells two configs apart."""
    skip = set(by) | _VALUE_COLUMNS | {"method.name", "data.name"}
    out = []
    for c in frame.columns:
        if c in skip or c.startswith("acc_t"):
            continue
        if frame[c].astype(str).nunique(dropna=False) > 1:
            out.append(c)
    return out


def _find_baseline(table: pd.DataFrame, by: list[str], name: str) -> int:
    labels = [" / ".join(str(r[f]) for f in by) for _, r in table.iterrows()]
    hits = [i for i, lab in enumerate(labels) if lab == name]
    if not hits:
        hits = [i for i, (_, r) in enumerate(table.iterrows()) if any(str(r[f]) == name for f in by)]
    if len(hits) == 1:
        return hits[0]
    shown = "; ".join(labels[:10]) + ("; ..." if len(labels) > 10 else "")
    why = "matches several groups" if hits else "matches no group"
    raise UserError(f"--baseline {name!r}: {why}; groups: {shown}")


def aggregate(frame: pd.DataFrame, by: str | Sequence[str] | None = None, *, baseline: str | None = None) -> Summary:
    """Group the tidy table (``load_results(...).frame``) and compute the per-group statistics."""
    import pandas as pd

    fields = resolve_by(frame, by)
    extra = _varying(frame, fields) if by is None else []
    rows = []
    samples: list[dict[str, list[float]]] = []
    for key, g in frame.groupby(fields, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict = dict(zip(fields, key, strict=True))
        for c in extra:
            row[c] = g[c].iloc[0]
        row["n"] = len(g)
        vals = {}
        for m in METRICS:
            v = [float(x) for x in g[m]]
            vals[m] = v
            row[f"{m}_mean"] = float(sum(v) / len(v))
            row[f"{m}_std"] = float(g[m].std(ddof=1)) if len(v) > 1 else math.nan
            row[f"{m}_ci95"] = ci95_halfwidth(v)
        rows.append(row)
        samples.append(vals)
    table = pd.DataFrame(rows)
    if baseline is not None:
        b = _find_baseline(table, fields, baseline)
        for m in METRICS:
            table[f"{m}_p"] = [math.nan if i == b else welch_p(s[m], samples[b][m]) for i, s in enumerate(samples)]
    return Summary(table=table, by=fields, extra=extra, baseline=baseline)
