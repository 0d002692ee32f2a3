"""Figures for a summary, each written as PNG and PDF.

- ``acc_matrix_<group>``: the seed-mean accuracy matrix R[i][j] as a heatmap, one per group;
- ``task_curves_<group>``: accuracy of each task over the sequence, mean with a 95% CI band;
- ``avg_accuracy_curve``: average accuracy over the tasks seen so far, every group in one plot;
- ``acc_vs_forgetting``: final average accuracy against forgetting per group, Pareto front marked;
- ``optuna_importance_<study>``: Optuna's hyperparameter importances, for each study in
  an ``optuna.db`` found under the analysed directories (skipped where it cannot be computed).

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot, so
nothing here opens a window or touches global state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.report import fmt_field
from analysis.stats import Summary

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["make_plots", "group_labels", "pareto_front", "OPTUNA_DB"]

OPTUNA_DB = "optuna.db"


def group_labels(s: Summary) -> list[str]:
    """Legend names: the group fields, then the hyperparameters that tell configs apart."""
    labels = []
    for i, (_, r) in enumerate(s.table.iterrows()):
        parts = [s.label(i)]
        parts += [f"{c.rsplit('.', 1)[-1]}={fmt_field(r[c])}" for c in s.extra[:4] if fmt_field(r[c]) != "—"]
        labels.append(" ".join(parts))
    return labels


def pareto_front(acc: list[float], forgetting: list[float]) -> list[int]:
    """Indices of the groups no other group beats on both accuracy (higher) and forgetting (lower)."""
    front = []
    for i, (a, f) in enumerate(zip(acc, forgetting, strict=True)):
        dominated = any(
            a2 >= a and f2 <= f and (a2 > a or f2 < f) for k, (a2, f2) in enumerate(zip(acc, forgetting, strict=True)) if k != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: forgetting[i])


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:80] or "group"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def _matrices(frame: pd.DataFrame) -> np.ndarray | None:
    """Stack a group's accuracy matrices (seeds, T, T) in percent; None if their task counts differ."""
    import numpy as np

    mats = list(frame["acc_matrix"])
    if len({len(m) for m in mats}) != 1:
        return None
    return 100 * np.array([[[math.nan if v is None else v for v in row] for row in m] for m in mats], dtype=float)


def _mean_ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the Student-t 95% half-width (0 with one seed: no band)."""
    import numpy as np
    from scipy import stats

    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.t.ppf(0.975, n - 1) * x.std(axis=0, ddof=1) / math.sqrt(n)


def _heatmap(R: np.ndarray, title: str) -> Figure:
    import numpy as np
    from matplotlib.figure import Figure

    T = R.shape[0]
    fig = Figure(figsize=(1.2 + 0.7 * T, 0.8 + 0.6 * T), layout="constrained")
    ax = fig.add_subplot()
    lo = np.nanmin(R) if np.isfinite(R).any() else 0.0
    im = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=min(lo, 100.0), vmax=100.0)
    if T <= 12:
        for i in range(T):
            for j in range(i + 1):
                if np.isfinite(R[i, j]):
                    ax.text(j, i, f"{R[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if R[i, j] < (lo + 100) / 2 else "black")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    return fig


def _task_curves(stack: np.ndarray, title: str) -> Figure:
    import numpy as np
    from matplotlib.figure import Figure

    T = stack.shape[1]
    mean, ci = _mean_ci(stack)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for j in range(T):
        x = list(range(j + 1, T + 1))
        m, h = mean[j:, j], ci[j:, j]
        (line,) = ax.plot(x, m, marker="o", ms=3, label=f"task {j + 1}")
        ax.fill_between(x, np.clip(m - h, 0, 100), np.clip(m + h, 0, 100), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(range(1, T + 1))
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + f"\nmean over {stack.shape[0]} seed(s), band: 95% CI", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if T > 6 else 1, loc="best")
    return fig


def _avg_curves(stacks: list[tuple[str, np.ndarray]]) -> Figure:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    T_max = 1
    for label, stack in stacks:
        T = stack.shape[1]
        T_max = max(T_max, T)
        seen = np.stack([np.nanmean(stack[:, i, : i + 1], axis=1) for i in range(T)], axis=1)  # (seeds, T)
        m, h = _mean_ci(seen)
        x = np.arange(1, T + 1)
        (line,) = ax.plot(x, m, marker="o", ms=3, label=label)
        ax.fill_between(x, np.clip(m - h, 0, 100), np.clip(m + h, 0, 100), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(range(1, T_max + 1))
    _finish(ax, "tasks trained", "average accuracy over tasks seen (%)",
            "Average accuracy over the sequence (band: 95% CI over seeds)")
    return fig


def _tradeoff(s: Summary, labels: list[str]) -> Figure:
    from matplotlib.figure import Figure

    t = s.table
    acc = [100 * float(v) for v in t["avg_acc_mean"]]
    fm = [100 * float(v) for v in t["forgetting_mean"]]
    acc_sd = [0.0 if math.isnan(v) else 100 * float(v) for v in t["avg_acc_std"]]
    fm_sd = [0.0 if math.isnan(v) else 100 * float(v) for v in t["forgetting_std"]]
    front = pareto_front(acc, fm)
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        ax.errorbar(fm[i], acc[i], xerr=fm_sd[i], yerr=acc_sd[i], fmt="o", ms=7, capsize=3,
                    label=f"{label} (n={int(t['n'].iloc[i])})")
    ax.plot([fm[i] for i in front], [acc[i] for i in front], "--", color="black", lw=1, zorder=0,
            label="Pareto front")
    ax.scatter([fm[i] for i in front], [acc[i] for i in front], s=220, facecolors="none", edgecolors="black",
               lw=1.5, zorder=3)
    _finish(ax, "forgetting (%)  ← less is better", "average accuracy (%)  ↑ more is better",
            "Average accuracy vs forgetting (mean ± std over seeds; circled: Pareto front)")
    return fig


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, grid and legend, the same on every comparison plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _optuna_importances(dirs: Iterable[Path]) -> list[tuple[str, str, dict[str, float]]]:
    """(study name, objective name, importances) for every study in every optuna.db under ``dirs``."""
    dbs = sorted({p.resolve() for d in dirs if Path(d).is_dir() for p in Path(d).rglob(OPTUNA_DB) if p.is_file()})
    if not dbs:
        return []
    try:
        import optuna
    except ImportError:
        return []
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    found = []
    for db in dbs:
        storage = f"sqlite:///{db}"
        try:
            names = optuna.get_all_study_names(storage=storage)
        except Exception:  # not an Optuna database, or locked: no importances, never a failure
            continue
        for name in names:
            try:
                study = optuna.load_study(study_name=name, storage=storage)
                multi = len(study.directions) > 1
                target = (lambda t: t.values[0]) if multi else None
                objective = (study.metric_names or ["objective"])[0] if study.metric_names else "objective"
                imp = optuna.importance.get_param_importances(study, target=target)
            except Exception:  # too few trials, no varied parameter, ...: nothing to show
                continue
            if imp:
                found.append((name if len(dbs) == 1 else f"{db.parent.name}-{name}", objective, dict(imp)))
    return found


def _importance_plot(study: str, objective: str, imp: dict[str, float]) -> Figure:
    from matplotlib.figure import Figure

    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6, 1.2 + 0.35 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color="tab:blue")
    ax.set_xlabel(f"importance for {objective} (% of explained variance)")
    ax.set_title(f"Optuna hyperparameter importances: {study}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def make_plots(frame: pd.DataFrame, s: Summary, out_dir: str | Path, *, sweep_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Write every figure for the summary ``s`` of ``frame`` into ``out_dir``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = group_labels(s)
    written: list[Path] = []
    taken: set[str] = set()
    stacks: list[tuple[str, np.ndarray]] = []
    # the same group-by as aggregate(): its groups come in the order of the summary's rows
    for i, (_, g) in enumerate(frame.groupby(s.by, sort=True, dropna=False)):
        stack = _matrices(g)
        if stack is None:  # seeds with different task counts (e.g. --by method across datasets)
            continue
        stacks.append((labels[i], stack))
        slug = _slug(s.label(i), taken)
        title = f"{labels[i]} (n={len(g)})"
        written += _save(_heatmap(stack.mean(axis=0), "seed-mean accuracy matrix (%)\n" + title), out, f"acc_matrix_{slug}")
        written += _save(_task_curves(stack, title), out, f"task_curves_{slug}")
    if stacks:
        written += _save(_avg_curves(stacks), out, "avg_accuracy_curve")
    written += _save(_tradeoff(s, labels), out, "acc_vs_forgetting")
    for study, objective, imp in _optuna_importances(Path(d) for d in sweep_dirs):
        written += _save(_importance_plot(study, objective, imp), out, f"optuna_importance_{_slug(study, taken)}")
    return written
