"""One self-contained HTML report: ``pah analyze DIR... --html FILE`` and ``SWEEP/report.html``.

A single file that opens anywhere, offline: inline CSS, every figure embedded as a base64
PNG, no script, no font or stylesheet fetched. In order: the verdict at a glance (the best
config against the base config, for a sweep), the seed-averaged table with 95% CIs, trial
states, every plot, Optuna's hyperparameter importances, the spec, the environment and the
timing. Numbers follow the tables' rules (percent, 4 significant digits for hyperparameters,
short key names with the full names alongside).
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.compare import NAMES, BaseComparison
from analysis.load import METRICS, Results, load_results
from analysis.markup import html_table as _table
from analysis.report import HEADERS, constant_fields, fmt_field, key_note, short_names
from analysis.states import TrialState, TrialStatus
from analysis.stats import Summary, aggregate
from analysis.sweep import SweepInfo, find_sweeps
from pah.io import atomic_write_bytes

if TYPE_CHECKING:
    import pandas as pd

    from analysis.sweep_report import SweepReport

__all__ = ["write_html", "render_html", "DETAIL_GROUPS"]

DETAIL_GROUPS = 3  # groups with figures of their own in the report (see render_html): ~0.3 s a figure on a CPU core

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 2em auto;
       max-width: 1180px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; white-space: nowrap; }
tr.best td { background: #e8f5e9; } tr.base td { background: #e3f2fd; }
.glance { border: 1px solid #bbb; border-radius: 6px; padding: .6em 1em; background: #fafafa; }
.verdict { font-weight: 600; }
.state-finished { color: #1b5e20; } .state-stopped { color: #6d4c41; } .state-errored { color: #b71c1c; }
.state-unfinished { color: #e65100; }
figure { display: inline-block; margin: .5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12.5px; }
.note { color: #555; font-size: .92em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(f) else f"{100 * f:.2f}"


def _summary_table(s: Summary, *, best: str | None, base: str | None) -> str:
    const = constant_fields(s)
    fields = [f for f in s.by if f not in const]
    names = short_names(s.extra)
    head = [_e(f) for f in fields] + [_e(names[c]) for c in s.extra] + ["n"]
    for m in METRICS:
        head += [f"{_e(HEADERS[m])} mean ± std", "95% CI ±"]
    if s.baseline is not None:
        head += [f"p {NAMES[m]}" for m in METRICS]
    rows, classes = [], []
    for _, r in s.table.iterrows():
        cells = [_e(fmt_field(r[f])) for f in [*fields, *s.extra]] + [str(int(r["n"]))]
        for m in METRICS:
            std = _pct(r[f"{m}_std"])
            cells += [f"{_pct(r[f'{m}_mean'])} ± {std}", _pct(r[f"{m}_ci95"])]
        if s.baseline is not None:
            cells += [_e(fmt_field(r[f"{m}_p"])) for m in METRICS]
        cid = str(r["config_id"]) if "config_id" in s.by else None
        role = [w for w, c in (("best", best), ("base", base)) if cid is not None and cid == c]
        if role and "config_id" in fields:
            k = fields.index("config_id")
            cells[k] += "".join(f" <b>({w})</b>" for w in role)
        rows.append(cells)
        classes.append(role[0] if role else "")
    first_num = len(fields) + len(s.extra)
    parts = []
    if const:
        parts.append("<p>All rows: " + ", ".join(f"{_e(f)} <b>{_e(fmt_field(s.table[f].iloc[0]))}</b>" for f in const)
                     + "</p>")
    parts.append(_table(head, rows, numeric=range(first_num, len(head)), classes=classes))
    notes = ["Mean ± sample std over the n seeds and the half-width of the Student-t 95% confidence interval, "
             "in percent; full precision in <code>pah analyze --format json</code>."]
    if key_note(names):
        notes.append(_e(key_note(names)))
    if s.baseline is not None:
        notes.append(f"p: Welch's t-test against {_e(s.baseline)}.")
    return "\n".join(parts) + "".join(f'<p class="note">{n}</p>' for n in notes)


def _comparison(c: BaseComparison, describe: dict[str, str]) -> str:
    rows = [["best" + (" = base" if c.best_is_base else ""), _e(c.best_id), _e(describe.get(c.best_id, ""))]]
    if not c.best_is_base:
        rows.append(["base", _e(c.base_id), _e(describe.get(c.base_id, ""))])
    out = [_table(["", "config_id", "hyperparameters"], rows)]
    if not c.best_is_base:
        diffs = [[NAMES[d.metric] + " %", f"{100 * d.best_mean:.2f}", f"{100 * d.base_mean:.2f}", f"{100 * d.diff:+.2f}",
                  "n/a" if math.isnan(d.p) else f"{d.p:.3g}"] for d in c.diffs]
        out.append(_table(["metric", f"best (n={c.best_n})", f"base (n={c.base_n})", "Δ (pp)", "Welch p"], diffs,
                          numeric=range(1, 5)))
    out.append(f'<p class="note">best: the highest mean {_e(c.selected_by)} among the confirmed configs '
               "(the base config is one of them).</p>")
    return "\n".join(out)


def _trials(statuses: Sequence[TrialStatus], frame: pd.DataFrame) -> str:
    counts = Counter(s.state for s in statuses)
    head = ", ".join(f"{counts[st]} {st.value}" for st in TrialState if counts[st])
    done = {str(Path(r["path"]).parent.resolve()): r for _, r in frame.iterrows()}
    rows = []
    for s in statuses:
        css = "state-" + s.state.name.lower()
        word = {TrialState.STOPPED: "stopped early", TrialState.UNFINISHED: "unfinished (killed, resumable)"}.get(
            s.state, s.state.value)
        r = done.get(str(s.path.resolve()))
        result = [_e(r["config_id"]), _e(r["seed"]), _pct(r["avg_acc"])] if r is not None else ["", "", ""]
        rows.append([_e(s.phase), _e(s.path.name), f'<span class="{css}">{_e(word)}</span>', *result, _e(s.detail)])
    return (f"<p>{len(statuses)} trial(s): {_e(head)}.</p>\n"
            + _table(["phase", "trial", "state", "config_id", "seed", "ACC %", "detail"], rows, numeric=[4, 5]))


def _statuses(results: Results, reports: Sequence[SweepReport]) -> list[TrialStatus]:
    if reports:
        return [t for r in reports for t in r.statuses]
    done = [TrialStatus(Path(p).parent, TrialState.FINISHED) for p in results.frame["path"]]
    return sorted(done + list(results.trials), key=lambda t: str(t.path))


def _environment(results: Results, sweeps: Sequence[SweepInfo]) -> str:
    frame = results.frame
    envs = Counter()
    hosts: set[str] = set()
    for text in frame["env"] if "env" in frame.columns else []:
        if not isinstance(text, str):
            continue
        env = json.loads(text)
        hosts.add(str(env.pop("hostname", "?")))
        envs[json.dumps(env, sort_keys=True)] += 1
    rows = [[_e(", ".join(f"{k} {v}" for k, v in json.loads(e).items())), str(n)] for e, n in envs.most_common()]
    out = [_table(["trial environment", "trials"], rows)] if rows else []
    out.append(f'<p class="note">{len(hosts)} host(s): {_e(", ".join(sorted(hosts)[:8]))}'
               f'{" ..." if len(hosts) > 8 else ""}. Report written with Python {_e(platform.python_version())} '
               f"on {_e(platform.node())}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.</p>")
    timing = []
    for sw in sweeps:
        timing += [[_e(f"{sw.name}: {phase} phase (wall)"), f"{sec:.0f} s"] for phase, sec in sw.seconds().items()]
    secs = [float(v) for v in frame.get("train_seconds", []) if v == v]
    if secs:
        timing += [["trials' training time, total", f"{sum(secs):.0f} s"],
                   ["per finished trial: median / max", f"{statistics.median(secs):.1f} s / {max(secs):.1f} s"]]
    if timing:
        out.append(_table(["timing", ""], timing, numeric=[1]))
    return "\n".join(out)


def _importances(imps: list[tuple[str, str, dict[str, float]]]) -> str:
    from analysis.plots import IMPORTANCE_METHOD

    if not imps:
        return ('<p class="note">No Optuna study with importances (no <code>optuna.db</code> under the analysed '
                "directories, or too few finished trials to compute them).</p>")
    out = []
    for study, objective, imp in imps:
        rows = [[_e(k), f"{100 * v:.1f}"] for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
        out.append(f"<p>Study <b>{_e(study)}</b>, objective {_e(objective)} ({_e(IMPORTANCE_METHOD)}):</p>")
        out.append(_table(["hyperparameter", "importance %"], rows, numeric=[1]))
    return "\n".join(out)


def render_html(
    results: Results,
    summary: Summary,
    *,
    paths: Sequence[str | Path],
    title: str | None = None,
    reports: Sequence[SweepReport] | None = None,
) -> str:
    """The whole report as one HTML string (figures are rendered here, to PNG in memory).

    ``reports``: the sweeps among ``paths`` as read already (analysis.sweep_report: their trials'
    states, comparison, a study's table); read here from ``results`` when not given."""
    import yaml

    from analysis.plots import detail_groups, figures, optuna_importances, png_bytes

    if reports is None:
        from analysis.sweep_report import report_for

        # a study's table from these results only when they are the study's alone (one path)
        reports = [report_for(sw, results, study_results=len(paths) == 1) for sw in find_sweeps(paths)]
    sweeps = [r.info for r in reports]
    title = title or (f"Sweep {sweeps[0].name}" if len(sweeps) == 1 else
                      "Results" + (": " + ", ".join(str(p) for p in paths) if paths else ""))
    comparisons = [(r.info, r.comparison) for r in reports]
    best = base = None
    glance = []
    for sw, c in comparisons:
        if c is not None:
            best, base = c.best_id, c.base_id
            glance.append(f'<p class="verdict">{_e(sw.name)}: {_e(c.verdict())}.</p>')
        elif sw.base:
            glance.append(f"<p>{_e(sw.name)}: the base config has no finished result in this sweep.</p>")
    statuses = _statuses(results, reports)
    counts = Counter(s.state for s in statuses)
    glance.append("<p>Trials: " + _e(", ".join(f"{counts[st]} {st.value}" for st in TrialState if counts[st])) + ".</p>")
    if len(summary.table):
        col = "avg_acc_mean"
        i = int(summary.table[col].astype(float).idxmax())
        glance.append(f"<p>Highest mean test ACC: <b>{_pct(summary.table[col].iloc[i])} %</b> "
                      f"({_e(summary.label(i))}, n={int(summary.table['n'].iloc[i])}).</p>")

    imps = optuna_importances(Path(p) for p in paths)
    # A figure per config costs ~0.25 s to draw and ~100 kB: a 1,000-trial sweep has hundreds of
    # configs (595 figures, 150 s at the end of the sweep). Past DETAIL_GROUPS, the best ones by
    # mean test ACC and the sweep's best and base configs get theirs; every config stays in the
    # tables and the trade-off plot, and `pah analyze DIR --plots` draws them all. (3, not 6: every
    # sweep's end waits for its report, and a 40-config sweep's 17 figures took ~5 s of one core.)
    detail = detail_groups(summary, DETAIL_GROUPS, keep=[c for _, cmp in comparisons if cmp is not None
                                                          for c in (cmp.best_id, cmp.base_id)])
    figs = []
    if detail is not None:
        figs.append(f'<p class="note">Per-group plots: the {len(detail)} groups with the highest mean test ACC '
                    f"(and the best and base configs) of {len(summary.table)}; every group is in the tables "
                    "and the ACC vs forgetting plot, and <code>pah analyze DIR --plots</code> draws each one.</p>")
    for name, fig in figures(results.frame, summary, sweep_dirs=paths, importances=imps, groups=detail):
        data = base64.b64encode(png_bytes(fig)).decode()
        figs.append(f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_e(name)}</figcaption></figure>")

    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(", ".join(str(p) for p in paths))} · {results.finished} finished trial(s) in '
        f"{len(summary.table)} group(s)</p>",
        '<div class="glance"><h2 style="margin-top:0;border:0">At a glance</h2>' + "\n".join(glance) + "</div>",
        "<h2>Seed-averaged results</h2>", _summary_table(summary, best=best, base=base),
    ]
    for sw, c in comparisons:
        if c is not None:
            sections += [f"<h2>Best config vs base config ({_e(sw.name)})</h2>", _comparison(c, sw.describe_configs())]
    for r in reports:  # a study (sweeps/study.py): its methods' table first
        if r.study is not None:
            from analysis.study_table import study_html

            sections[3:3] = [f"<h2>Study {_e(r.info.name)}: each method tuned with the same budget</h2>",
                             study_html(r.study)]
    sections += ["<h2>Plots</h2>", "\n".join(figs), "<h2>Optuna hyperparameter importances</h2>", _importances(imps)]
    for sw in sweeps:
        sections += [f"<h2>Spec ({_e(sw.name)})</h2>",
                     f"<pre>{_e(yaml.safe_dump(sw.spec, sort_keys=False, allow_unicode=True))}</pre>"]
    sections += ["<h2>Trials</h2>", _trials(statuses, results.frame)]
    if results.malformed:
        sections.append("<p>Skipped files:</p><ul>" + "".join(f"<li>{_e(p)}: {_e(why)}</li>" for p, why in results.malformed)
                        + "</ul>")
    sections += ["<h2>Environment and timing</h2>", _environment(results, sweeps)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def write_html(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    results: Results | None = None,
    summary: Summary | None = None,
    by: str | Sequence[str] | None = None,
    baseline: str | None = None,
    reports: Sequence[SweepReport] | None = None,
) -> Path:
    """Write the report of the results under ``paths`` to ``out`` (atomically); returns ``out``.

    What was read already is passed on, not read again: ``results``, ``summary`` (their
    aggregate) and ``reports`` (see :func:`render_html`)."""
    if results is None:
        results = load_results(paths)
    if summary is None:
        summary = aggregate(results.frame, by, baseline=baseline)
    atomic_write_bytes(Path(out), render_html(results, summary, paths=paths, reports=reports).encode())
    return Path(out)
