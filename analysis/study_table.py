"""A study's table: one row per method, its tuned config over the confirm seeds on test.

Reads what ``pah sweep`` leaves in a study's directory (sweeps/study.py): the confirm
candidates in ``sweep.json`` (each method's top-K search configs and its default config)
and the results of the confirmed runs. For each method, the *tuned* config is the candidate
with the best seed mean of the spec's validation metric (analysis.compare, as for a sweep's
best config: the test set never chooses); its test metrics are seed-averaged with
analysis.stats (mean, sample std, Student-t 95% CI, Welch's p against the reference method),
and set beside the method's *default* config over the same seeds (how far tuning moved it),
and the budget the method actually spent in the search (trials, trials stopped early,
CPU and GPU hours from the trials' own training time).

The table holds exactly the confirmed runs: the confirm phase's trials plus, for the
search seed when it is a confirm seed, the search trials of the candidates (the rows of
``SweepInfo.table_rows``, as the sweep's own table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.compare import HIGHER_IS_BETTER, NAMES, compare_with_base
from analysis.load import METRICS, Results, load_results
from analysis.report import _p, _pct, _tex, fmt_field, short_names
from analysis.states import TrialState, TrialStatus, trial_status
from analysis.stats import aggregate
from analysis.sweep import SweepInfo, read_sweep
from pah.errors import UserError
from pah.io import atomic_write_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["StudyTable", "MethodRow", "Budget", "study_table", "render_study", "study_summary", "write_study_files",
           "study_html", "is_study", "STUDY_DIR", "STUDY_FORMATS"]

#: where a finished study writes its table (SWEEP/study/table.{md,tex,csv,json})
STUDY_DIR = "study"
STUDY_FORMATS = ("table", "md", "latex", "csv", "json")
_EXT = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}


@dataclass
class Budget:
    """What a method's search spent: its trials by state, and their training time."""

    trials: int = 0
    finished: int = 0
    stopped: int = 0
    errored: int = 0
    unfinished: int = 0
    train_seconds: float = 0.0  # search trials
    confirm_seconds: float = 0.0  # the method's confirm runs
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def cpu_hours(self) -> float:
        return self.train_seconds * self.cpus / 3600

    @property
    def gpu_hours(self) -> float:
        return self.train_seconds * self.gpus / 3600


@dataclass
class MethodRow:
    method: str
    tuned_id: str | None = None
    default_id: str | None = None
    tuned_params: dict[str, Any] = field(default_factory=dict)
    default_params: dict[str, Any] = field(default_factory=dict)
    n: int = 0
    stats: dict[str, float] = field(default_factory=dict)  # m_mean, m_std, m_ci95, m_p (fractions)
    default_n: int = 0
    default_stats: dict[str, float] = field(default_factory=dict)  # m_mean, m_std
    delta_p: dict[str, float] = field(default_factory=dict)  # Welch p, tuned vs default, per metric
    budget: Budget = field(default_factory=Budget)

    def value(self, key: str) -> float:
        v = self.stats.get(key)
        return math.nan if v is None else float(v)


@dataclass
class StudyTable:
    name: str
    reference: str
    metric: str
    mode: str
    num_samples: int
    seeds: list[int]
    rows: list[MethodRow]
    frame: Any = None  # the tuned configs' confirmed runs (analysis.load's tidy table), for the plots

    def best(self, m: str) -> float:
        """The best printed (two-decimal percent) mean of metric ``m`` over the rows."""
        vals = [round(100 * r.value(f"{m}_mean"), 2) for r in self.rows if not math.isnan(r.value(f"{m}_mean"))]
        if not vals:
            return math.nan
        return max(vals) if HIGHER_IS_BETTER[m] else min(vals)

    def is_best(self, row: MethodRow, m: str) -> bool:
        v = row.value(f"{m}_mean")
        return len(self.rows) > 1 and not math.isnan(v) and round(100 * v, 2) == self.best(m)

    def notes(self) -> list[str]:
        seeds = ", ".join(str(s) for s in self.seeds)
        lines = [
            f"protocol: end-of-training HPO; every method searched with the same budget ({self.num_samples} trials, "
            f"the same epochs, scheduler and search), selected on {self.metric} ({self.mode}); the tuned config "
            f"(best mean {self.metric} of the confirmed candidates) and the default config reported on test over "
            f"seeds {seeds}",
            "cells: mean ± std over n seeds, in % (± half-width of the 95% CI); best per column marked; "
            f"p: Welch's t-test against {self.reference}",
            "default: the method's default config (the base, the method settings of its DATASET-METHOD preset, "
            "its set) on the same seeds; Δ: tuned - default (Welch p)",
            "budget: the search's trials of the method, those stopped early by the scheduler, and their training "
            "time in CPU and GPU hours (resources per trial x seconds trained)",
        ]
        for r in self.rows:
            keys = sorted(set(r.tuned_params) | set(r.default_params))
            names = short_names(keys)
            tuned = " ".join(f"{names[k]}={fmt_field(r.tuned_params.get(k))}" for k in keys)
            default = " ".join(f"{names[k]}={fmt_field(r.default_params.get(k))}" for k in keys)
            same = r.tuned_id is not None and r.tuned_id == r.default_id
            lines.append(f"{r.method}: tuned {'= default ' if same else ''}{tuned or '—'}"
                         + ("" if same else f"; default {default or '—'}"))
        return lines


# --------------------------------------------------------------------------- building


def is_study(info: SweepInfo | None) -> bool:
    return info is not None and bool(info.spec.get("methods"))


def _trial_method(d: Path) -> str | None:
    try:
        return json.loads((d / "params.json").read_text())["params"].get("method.name")
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _trial_seconds(d: Path) -> float:
    """A trial's training time: its result's, or what it reported when the scheduler stopped it."""
    for name, get in (("result.json", lambda o: (o.get("timing") or {}).get("train_seconds")),
                      ("stopped.json", lambda o: o.get("train_seconds"))):
        try:
            v = get(json.loads((d / name).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return 0.0


def _budgets(info: SweepInfo, methods: Sequence[str], statuses: Sequence[TrialStatus] | None = None) -> dict[str, Budget]:
    res = info.spec.get("resources") or {}
    out = {m: Budget(cpus=float(res.get("cpus", 1.0)), gpus=float(res.get("gpus", 0.0))) for m in methods}
    known = {s.path: s.state for s in statuses or ()}
    for phase in ("search", "confirm"):
        root = info.dir / "trials" / phase
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            m = _trial_method(d)
            if m not in out:
                continue
            b = out[m]
            if phase == "confirm":
                b.confirm_seconds += _trial_seconds(d)
                continue
            b.train_seconds += _trial_seconds(d)  # all it trained, a killed driver's orphans too
            state = known[d] if d in known else trial_status(d).state
            # the trials Tune ran to an end; not an orphan (started after Tune's last snapshot, then the
            # driver was killed): a resume samples another trial in its place, which is counted instead
            b.trials += state in (TrialState.FINISHED, TrialState.STOPPED, TrialState.ERRORED)
            b.finished += state is TrialState.FINISHED
            b.stopped += state is TrialState.STOPPED
            b.errored += state is TrialState.ERRORED
            b.unfinished += state is TrialState.UNFINISHED
    return out


def _choose(frame: pd.DataFrame, ids: list[str], default_id: str | None, metric: str, mode: str) -> str | None:
    """The candidate with the best seed mean of ``metric`` (its test twin where a candidate lacks it)."""
    have = [c for c in ids if (frame["config_id"] == c).any()]
    if not have:
        return None
    col = metric if metric in frame.columns and all(frame.loc[frame["config_id"] == c, metric].notna().all()
                                                    for c in have) else metric.removeprefix("val_")
    sign = 1.0 if mode == "max" else -1.0
    return max(have, key=lambda c: (sign * float(frame.loc[frame["config_id"] == c, col].mean()), c == default_id))


def study_table(sweep_dir: str | Path, *, results: Results | None = None, info: SweepInfo | None = None,
                statuses: Sequence[TrialStatus] | None = None) -> StudyTable | None:
    """The study in ``sweep_dir`` as a table (None if it is not a study). Raises nothing for a study
    still running: methods without confirmed runs have empty rows.

    What was read already is used, not read again: ``results`` (a load that holds the study's
    results), ``info`` (its sweep.json), ``statuses`` (its trials' states, for the budgets)."""
    info = info if info is not None else read_sweep(sweep_dir)
    if not is_study(info):
        return None
    spec = info.spec
    methods = list(spec["methods"])
    metric, mode = info.metric
    reference = (spec.get("study") or {}).get("reference") or methods[0]
    if results is None:
        try:
            results = load_results([info.dir])
        except UserError:  # nothing finished yet
            pass
    frame = None if results is None else info.table_rows(results.frame)  # the confirmed runs
    if frame is not None and not len(frame):
        frame = None
    budgets = _budgets(info, methods, statuses)
    rows, tuned_rows = [], []
    for m in methods:
        row = MethodRow(m, budget=budgets[m])
        rows.append(row)
        cands = [c for c in info.candidates if c.get("method") == m]
        default = next((c for c in cands if c.get("base")), None)
        row.default_id = default["config_id"] if default else None
        row.default_params = {k: v for k, v in (default or {}).get("params", {}).items() if k != "method.name"}
        if frame is None or not cands:
            continue
        mine = frame[(frame["method"] == m) & frame["config_id"].isin([c["config_id"] for c in cands])]
        row.tuned_id = _choose(mine, [c["config_id"] for c in cands], row.default_id, metric, mode)
        if row.tuned_id is None:
            continue
        tuned = next(c for c in cands if c["config_id"] == row.tuned_id)
        row.tuned_params = {k: v for k, v in tuned.get("params", {}).items() if k != "method.name"}
        tuned_rows.append(mine[mine["config_id"] == row.tuned_id])
        if row.default_id is not None:
            d = mine[mine["config_id"] == row.default_id]
            row.default_n = len(d)
            for k in METRICS:
                v = [float(x) for x in d[k]]
                row.default_stats[f"{k}_mean"] = sum(v) / len(v) if v else math.nan
                row.default_stats[f"{k}_std"] = float(d[k].std(ddof=1)) if len(v) > 1 else math.nan
            cmp = compare_with_base(mine, candidates=[row.tuned_id], base_id=row.default_id, metric=metric, mode=mode)
            if cmp is not None:
                row.delta_p = {x.metric: x.p for x in cmp.diffs}
    tuned_frame = None
    if tuned_rows:
        import pandas as pd

        tuned_frame = pd.concat(tuned_rows, ignore_index=True)
        have = set(tuned_frame["method"])
        summary = aggregate(tuned_frame, by=["method"], baseline=reference if reference in have else None)
        for _, r in summary.table.iterrows():
            row = next(x for x in rows if x.method == r["method"])
            row.n = int(r["n"])
            row.stats = {c: float(r[c]) for c in summary.table.columns if c not in ("method", "n")}
    seeds = list((spec.get("confirm") or {}).get("seeds") or [])
    return StudyTable(name=info.name, reference=reference, metric=metric, mode=mode,
                      num_samples=int(spec.get("num_samples", 0)), seeds=seeds, rows=rows, frame=tuned_frame)


# --------------------------------------------------------------------------- rendering

_SHORT = {"avg_acc": "ACC", "forgetting": "Forg.", "bwt": "BWT"}


def _cell(st: StudyTable, r: MethodRow, m: str, *, ci: bool = True, sep: str = " ± ") -> str:
    cell = _pct(r.stats.get(f"{m}_mean"), r.stats.get(f"{m}_std"), sep=sep)
    c = r.stats.get(f"{m}_ci95")
    if ci and c is not None and not math.isnan(c):
        cell += f" (±{100 * c:.2f})"
    return cell


def _delta(r: MethodRow, m: str = "avg_acc") -> str:
    t, d = r.stats.get(f"{m}_mean"), r.default_stats.get(f"{m}_mean")
    if t is None or d is None or math.isnan(t) or math.isnan(d):
        return "n/a"
    if r.tuned_id == r.default_id:
        return "0 (= default)"
    p = r.delta_p.get(m, math.nan)
    return f"{100 * (t - d):+.2f} (p {_p(p)})"


def _hours(h: float) -> str:
    return f"{h:.3f}" if h < 10 else f"{h:.1f}"


def _rows(st: StudyTable, *, mark: Any, ci: bool = True, sep: str = " ± ") -> tuple[list[str], list[list[str]]]:
    head = ["method", "n", *(f"{NAMES[m]} %" for m in METRICS), *(f"p {_SHORT[m]}" for m in METRICS),
            "default ACC %", "Δ ACC pp", "trials", "stopped", "CPU h", "GPU h"]
    body = []
    for r in st.rows:
        cells = [r.method, str(r.n)]
        for m in METRICS:
            cell = _cell(st, r, m, ci=ci, sep=sep)
            cells.append(mark(cell) if st.is_best(r, m) else cell)
        cells += ["ref." if r.method == st.reference else _p(r.stats.get(f"{m}_p")) for m in METRICS]
        cells += [_pct(r.default_stats.get("avg_acc_mean"), r.default_stats.get("avg_acc_std"), sep=sep), _delta(r),
                  str(r.budget.trials), str(r.budget.stopped), _hours(r.budget.cpu_hours), _hours(r.budget.gpu_hours)]
        body.append(cells)
    return head, body


def _text(st: StudyTable) -> str:
    head, body = _rows(st, mark=lambda c: c + " *")
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    out = [f"study {st.name}: tuned config of each method, on test", line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    out += ["* best in its column", *st.notes()]
    return "\n".join(out) + "\n"


def _md(st: StudyTable) -> str:
    head, body = _rows(st, mark=lambda c: f"**{c}**")
    out = ["| " + " | ".join(head) + " |", "|---|" + "|".join("---:" for _ in head[1:]) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
    return "\n".join(out) + "\n\n" + "  \n".join(["**bold**: best in its column", *st.notes()]) + "\n"


def _latex(st: StudyTable) -> str:
    head, body = _rows(st, mark=lambda c: rf"\textbf{{{c}}}", ci=False, sep=r" $\pm$ ")
    arrows = {"avg_acc": r"$\uparrow$", "forgetting": r"$\downarrow$", "bwt": r"$\uparrow$"}
    tex_head = ["Method", "$n$", *(rf"{NAMES[m]} (\%) {arrows[m]}" for m in METRICS),
                *(f"$p$ {_SHORT[m]}" for m in METRICS), r"Default ACC (\%)", r"$\Delta$ ACC (pp)", "Trials",
                "Stopped", "CPU h", "GPU h"]
    assert len(tex_head) == len(head)
    lines = [
        f"% study {st.name}: mean $\\pm$ std over seeds {', '.join(map(str, st.seeds))} on test, in percent; "
        "needs \\usepackage{booktabs}",
        *(f"% {_tex(n)}" for n in st.notes()),
        r"\begin{tabular}{lr" + "c" * len(METRICS) + "c" * len(METRICS) + "ccrrrr}",
        r"\toprule",
        " & ".join(tex_head) + r" \\",
        r"\midrule",
    ]
    for b in body:
        cells = [_tex(b[0]), b[1], *b[2:5], *(_tex(c).replace("—", "--") for c in b[5:8]),
                 b[8], _tex(b[9]), *b[10:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _records(st: StudyTable) -> list[dict[str, Any]]:
    def plain(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    out = []
    for r in st.rows:
        rec: dict[str, Any] = {"method": r.method, "reference": r.method == st.reference, "tuned_config_id": r.tuned_id,
                               "default_config_id": r.default_id, "n": r.n}
        for m in METRICS:
            for k in ("mean", "std", "ci95", "p"):
                rec[f"{m}_{k}"] = plain(r.stats.get(f"{m}_{k}", math.nan))
        rec["default_n"] = r.default_n
        for m in METRICS:
            rec[f"default_{m}_mean"] = plain(r.default_stats.get(f"{m}_mean", math.nan))
            rec[f"default_{m}_std"] = plain(r.default_stats.get(f"{m}_std", math.nan))
            rec[f"tuned_vs_default_{m}_p"] = plain(r.delta_p.get(m, math.nan))
        b = r.budget
        rec.update(search_trials=b.trials, finished=b.finished, stopped_early=b.stopped, errored=b.errored,
                   unfinished=b.unfinished, search_train_seconds=round(b.train_seconds, 3),
                   confirm_train_seconds=round(b.confirm_seconds, 3), cpu_hours=b.cpu_hours, gpu_hours=b.gpu_hours,
                   tuned_params=json.dumps(r.tuned_params, sort_keys=True),
                   default_params=json.dumps(r.default_params, sort_keys=True))
        out.append(rec)
    return out


def _csv(st: StudyTable) -> str:
    import pandas as pd

    return pd.DataFrame(_records(st)).to_csv(index=False, lineterminator="\n")


def render_study(st: StudyTable, fmt: str = "table") -> str:
    if fmt not in STUDY_FORMATS:
        raise UserError(f"--format {fmt!r}: unknown format; valid formats: {', '.join(STUDY_FORMATS)}")
    if fmt == "json":
        return json.dumps(_records(st), indent=2, allow_nan=False) + "\n"
    return {"table": _text, "md": _md, "latex": _latex, "csv": _csv}[fmt](st)


def study_summary(sweep_dir: str | Path, *, table: StudyTable | None = None) -> str:
    """What ``pah sweep`` prints at the end of a study: the table (``table``, else read) and where its files are."""
    st = table if table is not None else study_table(sweep_dir)
    if st is None:
        return ""
    return "\n" + render_study(st, "table") + f"files: {Path(sweep_dir) / STUDY_DIR}/table.{{md,tex,csv,json}}\n"


def write_study_files(sweep_dir: str | Path, *, table: StudyTable | None = None) -> bool:
    """SWEEP/study/table.{md,tex,csv,json} of ``table`` (else read); False when the sweep is not a study."""
    st = table if table is not None else study_table(sweep_dir)
    if st is None:
        return False
    out = Path(sweep_dir) / STUDY_DIR
    out.mkdir(exist_ok=True)
    for fmt, ext in _EXT.items():
        atomic_write_bytes(out / f"table.{ext}", render_study(st, fmt).encode())
    return True


def study_html(st: StudyTable) -> str:
    """The study's section of the HTML report: the table, its notes, and each method's per-task accuracy."""
    import base64
    import html as html_mod

    from analysis.markup import html_table as _table
    from analysis.plots import figures, png_bytes

    head, body = _rows(st, mark=lambda c: f"<b>{c}</b>")
    parts = [_table([html_mod.escape(h) for h in head], body, numeric=range(1, len(head)))]
    parts += [f'<p class="note">{html_mod.escape(n)}</p>' for n in st.notes()]
    if st.frame is not None and len(st.frame):
        summary = aggregate(st.frame, by=["method"])
        import matplotlib.pyplot as plt

        for name, fig in figures(st.frame, summary, importances=[]):
            keep = name.startswith(("task_curves_", "avg_accuracy_curve"))
            data = base64.b64encode(png_bytes(fig)).decode() if keep else ""
            plt.close(fig)
            if not keep:
                continue
            parts.append(f'<figure><img alt="{html_mod.escape(name)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html_mod.escape(name)} (tuned config)</figcaption></figure>")
    return "\n".join(parts)
