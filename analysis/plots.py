"""Figures for a summary, each written as PNG and PDF.

- ``acc_matrix_<group>``: the seed-mean accuracy matrix R[i][j] as a heatmap, one per group;
- ``task_curves_<group>``: accuracy of each task over the sequence, mean with a 95% CI band;
- ``avg_accuracy_curve``: average accuracy over the tasks seen so far, every group in one plot;
- ``acc_vs_forgetting``: final average accuracy against forgetting per group, Pareto front marked;
- ``optuna_importance_<study>``: Optuna's hyperparameter importances, for each study in
  an ``optuna.db`` found under the analysed directories (skipped where it cannot be computed).

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot, so
nothing here opens a window or touches global state. Legends never cover data: they sit
outside the axes (below them, or to the right of the per-task curves), and the figure
grows with the number of entries. Hyperparameters are shown to 4 significant digits under
the short names of the tables (``lr`` for ``train.lr``), and group fields shared by every
group (a sweep's method and dataset) go into the titles, not into every legend entry.
``figures()`` yields the figures without writing anything (the HTML report and the layout
tests use it); ``make_plots`` writes them.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.report import constant_fields, fmt_field, key_note, short_names
from analysis.stats import Summary

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["make_plots", "figures", "png_bytes", "group_labels", "context", "pareto_front", "optuna_importances",
           "OPTUNA_DB"]

OPTUNA_DB = "optuna.db"
#: how the importances are computed, for labels
IMPORTANCE_METHOD = "Optuna's PED-ANOVA, normalised to sum to 100"
#: hyperparameters named in a legend entry (as in the tables)
MAX_LEGEND_KEYS = 4
MARKERS = "osD^vP*Xph"


def group_labels(s: Summary) -> list[str]:
    """Legend names: the group fields that differ between groups, then the hyperparameters that do."""
    const = set(constant_fields(s))
    names = short_names(s.extra[:MAX_LEGEND_KEYS])
    labels = []
    for _, r in s.table.iterrows():
        parts = [" / ".join(str(r[f]) for f in s.by if f not in const)]
        parts += [f"{names[c]}={fmt_field(r[c])}" for c in s.extra[:MAX_LEGEND_KEYS] if fmt_field(r[c]) != "—"]
        labels.append(" ".join(parts))
    return labels


def context(s: Summary) -> str:
    """What every group shares (``pah / split-digits``), for titles; '' if nothing."""
    const = constant_fields(s)
    return " / ".join(fmt_field(s.table[f].iloc[0]) for f in const)


def _title(*parts: str, width: int = 70) -> str:
    return "\n".join(textwrap.fill(p, width=width, break_on_hyphens=False) for p in parts if p)


def _legend_below(fig: Figure, ax) -> None:
    """One legend for the axes' artists, under the axes (constrained layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    ncols = 2 if max((len(lab) for lab in labels), default=0) <= 45 and len(labels) > 4 else 1
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=7, frameon=False)


def _height(base: float, entries: int, ncols: int = 1) -> float:
    """Figure height in inches: the plot, plus one legend line per ``ncols`` entries."""
    return base + 0.17 * math.ceil(entries / ncols)


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
        fig.savefig(p, dpi=150)
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
    fig = Figure(figsize=(7, max(4.0, _height(0.8, T, 2 if T > 14 else 1))), layout="constrained")
    ax = fig.add_subplot()
    for j in range(T):
        x = list(range(j + 1, T + 1))
        m, h = mean[j:, j], ci[j:, j]
        (line,) = ax.plot(x, m, marker="o", ms=3, label=f"task {j + 1}")
        ax.fill_between(x, np.clip(m - h, 0, 100), np.clip(m + h, 0, 100), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(range(1, T + 1))
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(title, f"mean over {stack.shape[0]} seed(s), band: 95% CI"), fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, ncols=2 if T > 14 else 1, frameon=False)
    return fig


def _avg_curves(stacks: list[tuple[str, np.ndarray]], where: str) -> Figure:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, _height(4.5, len(stacks))), layout="constrained")
    ax = fig.add_subplot()
    T_max = 1
    for i, (label, stack) in enumerate(stacks):
        T = stack.shape[1]
        T_max = max(T_max, T)
        seen = np.stack([np.nanmean(stack[:, i, : i + 1], axis=1) for i in range(T)], axis=1)  # (seeds, T)
        m, h = _mean_ci(seen)
        x = np.arange(1, T + 1)
        (line,) = ax.plot(x, m, marker=MARKERS[(i // 10) % len(MARKERS)], ms=3, label=label)
        ax.fill_between(x, np.clip(m - h, 0, 100), np.clip(m + h, 0, 100), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xticks(range(1, T_max + 1))
    _finish(fig, ax, "tasks trained", "average accuracy over tasks seen (%)",
            _title("Average accuracy over the sequence (band: 95% CI over seeds)", where, width=95))
    return fig


def _tradeoff(s: Summary, labels: list[str], where: str) -> Figure:
    from matplotlib.figure import Figure

    t = s.table
    acc = [100 * float(v) for v in t["avg_acc_mean"]]
    fm = [100 * float(v) for v in t["forgetting_mean"]]
    acc_sd = [0.0 if math.isnan(v) else 100 * float(v) for v in t["avg_acc_std"]]
    fm_sd = [0.0 if math.isnan(v) else 100 * float(v) for v in t["forgetting_std"]]
    front = pareto_front(acc, fm)
    fig = Figure(figsize=(7.5, _height(5.0, len(labels) + 1)), layout="constrained")
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        ax.errorbar(fm[i], acc[i], xerr=fm_sd[i], yerr=acc_sd[i], fmt=MARKERS[(i // 10) % len(MARKERS)], ms=7, capsize=3,
                    label=f"{label} (n={int(t['n'].iloc[i])})")
    ax.plot([fm[i] for i in front], [acc[i] for i in front], "--", color="black", lw=1, zorder=0,
            label="Pareto front")
    ax.scatter([fm[i] for i in front], [acc[i] for i in front], s=220, facecolors="none", edgecolors="black",
               lw=1.5, zorder=3)
    _finish(fig, ax, "forgetting (%)  ← less is better", "average accuracy (%)  ↑ more is better",
            _title("Average accuracy vs forgetting (mean ± std over seeds; circled: Pareto front)", where, width=95))
    return fig


def _finish(fig: Figure, ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, grid and the legend below the axes, the same on every comparison plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)


def optuna_importances(dirs: Iterable[Path]) -> list[tuple[str, str, dict[str, float]]]:
    """(study name, objective name, importances) for every study in every optuna.db under ``dirs``."""
    dbs = sorted({p.resolve() for d in dirs if Path(d).is_dir() for p in Path(d).rglob(OPTUNA_DB) if p.is_file()})
    if not dbs:
        return []
    try:
        import optuna
    except ImportError:
        return []
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    evaluator = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)  # Optuna's default since 4.x
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
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    imp = optuna.importance.get_param_importances(
                        study, target=target, evaluator=evaluator() if evaluator else None)
            except Exception:  # too few trials, no varied parameter, ...: nothing to show
                continue
            if any("too small" in str(w.message) for w in caught):
                continue  # Optuna would report equal importances: a made-up answer
            if imp:
                found.append((name if len(dbs) == 1 else f"{db.parent.name}-{name}", objective, dict(imp)))
    return found


def _importance_plot(study: str, objective: str, imp: dict[str, float]) -> Figure:
    from matplotlib.figure import Figure

    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6, 1.2 + 0.35 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color="tab:blue")
    ax.set_xlabel(f"importance for {objective} (%, {IMPORTANCE_METHOD})")
    ax.set_title(f"Optuna hyperparameter importances: {study}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def figures(
    frame: pd.DataFrame,
    s: Summary,
    *,
    sweep_dirs: Iterable[str | Path] = (),
    importances: list[tuple[str, str, dict[str, float]]] | None = None,
    groups: Collection[int] | None = None,
) -> Iterator[tuple[str, Figure]]:
    """Every figure for the summary ``s`` of ``frame``, as (file stem, figure), one at a time.

    ``importances``: Optuna's, as :func:`optuna_importances` returns them (default: computed
    from the ``optuna.db`` files under ``sweep_dirs``). ``groups``: the summary rows that get
    their own figures and a curve in the average-accuracy plot (default: all); the trade-off
    scatter always shows every group.
    """
    labels = group_labels(s)
    where = " · ".join(p for p in (context(s), key_note(short_names(s.extra[:MAX_LEGEND_KEYS]))) if p)
    taken: set[str] = set()
    stacks: list[tuple[str, np.ndarray]] = []
    # the same group-by as aggregate(): its groups come in the order of the summary's rows
    for i, (_, g) in enumerate(frame.groupby(s.by, sort=True, dropna=False)):
        if groups is not None and i not in groups:
            continue
        stack = _matrices(g)
        if stack is None:  # seeds with different task counts (e.g. --by method across datasets)
            continue
        stacks.append((labels[i], stack))
        slug = _slug(s.label(i), taken)
        title = _title(f"{context(s)} {labels[i]} (n={len(g)})".strip())
        yield f"acc_matrix_{slug}", _heatmap(stack.mean(axis=0), "seed-mean accuracy matrix (%)\n" + title)
        yield f"task_curves_{slug}", _task_curves(stack, title)
    if stacks:
        yield "avg_accuracy_curve", _avg_curves(stacks, where)
    yield "acc_vs_forgetting", _tradeoff(s, labels, where)
    if importances is None:
        importances = optuna_importances(Path(d) for d in sweep_dirs)
    for study, objective, imp in importances:
        yield f"optuna_importance_{_slug(study, taken)}", _importance_plot(study, objective, imp)


def detail_groups(s: Summary, limit: int, keep: Iterable[str | None] = ()) -> list[int] | None:
    """The summary rows worth a figure each when there are more than ``limit`` groups: the
    ``limit`` with the highest mean test ACC, plus the groups whose config_id is in ``keep``
    (e.g. the sweep's best and base configs); None (every group) when there are few."""
    n = len(s.table)
    if n <= limit:
        return None
    order = s.table["avg_acc_mean"].astype(float).fillna(-1.0).to_numpy().argsort(kind="stable")[::-1]
    rows = [int(i) for i in order[:limit]]
    if "config_id" in s.table:
        ids = s.table["config_id"].astype(str).tolist()
        rows += [ids.index(c) for c in keep if c is not None and c in ids and ids.index(c) not in rows]
    return sorted(rows)


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # constrained layout fits the canvas: "tight" would draw twice
    return buf.getvalue()


def make_plots(frame: pd.DataFrame, s: Summary, out_dir: str | Path, *, sweep_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Write every figure for the summary ``s`` of ``frame`` into ``out_dir``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fig in figures(frame, s, sweep_dirs=sweep_dirs):
        written += _save(fig, out, name)
    return written
