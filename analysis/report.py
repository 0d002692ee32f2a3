"""Render a :class:`~analysis.stats.Summary` as a terminal table, Markdown, LaTeX, CSV or JSON.

Tables show percentages (``mean ± std``) and hyperparameters to 4 significant digits under
short names (``train.lr`` -> ``lr``, full names in a footnote); group fields that are the
same in every row (a sweep's method and dataset) are said once above the table, so a
typical sweep's table fits in 120 columns. CSV and JSON are for machines and hold the
fractions of CONTRACT.md at full precision, with ``null`` where a statistic is undefined
(one seed).
"""

from __future__ import annotations

import io
import json
import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from analysis.load import METRICS
from analysis.stats import Summary
from pah.errors import UserError

__all__ = ["FORMATS", "render", "records", "check_format", "fmt_field", "short_names", "key_note", "constant_fields"]

FORMATS = ("table", "md", "latex", "csv", "json")
HEADERS = {"avg_acc": "ACC %", "forgetting": "Forgetting %", "bwt": "BWT %"}
#: the terminal table's width budget for a typical sweep (notes are wrapped to it)
MAX_WIDTH = 120
#: which direction is better, for the bold face in LaTeX
BETTER = {"avg_acc": max, "forgetting": min, "bwt": max}
#: at most this many differing hyperparameters as columns in the human-readable tables
MAX_EXTRA_COLUMNS = 4


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _plain(v: Any) -> Any:
    """numpy scalars and NaN -> JSON values."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def records(s: Summary) -> list[dict[str, Any]]:
    """One JSON object per group: group fields, n, and m_mean/m_std/m_ci95[/m_p] as fractions."""
    cols = [*s.fields, "n"]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std", f"{m}_ci95"] + ([f"{m}_p"] if s.baseline is not None else [])
    return [{c: _plain(row[c]) for c in cols} for _, row in s.table.iterrows()]


def fmt_field(v: Any) -> str:
    """A group field for people: 4 significant digits (0.002742), '—' where the key does not apply, 32 not 32.0."""
    v = _plain(v)
    if v is None:
        return "—"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column names for dotted config keys: the last part (``train.lr`` -> ``lr``), more parts where two clash.

    The same mapping is used by every table, legend and report, with the full names in a footnote.
    """
    out: dict[str, str] = {}
    depth = {k: 1 for k in keys}
    while True:
        out = {k: ".".join(k.split(".")[-depth[k]:]) for k in keys}
        clash = [k for k in keys if list(out.values()).count(out[k]) > 1 and depth[k] < len(k.split("."))]
        if not clash:
            return out
        for k in clash:
            depth[k] += 1


def key_note(names: dict[str, str]) -> str:
    """``keys: lr = train.lr, head_lr = train.head_lr`` for the names that were shortened ('' if none)."""
    pairs = [f"{v} = {k}" for k, v in names.items() if v != k]
    return "keys: " + ", ".join(pairs) if pairs else ""


def constant_fields(s: Summary) -> list[str]:
    """Group fields with one value in every row (e.g. method and dataset of a sweep), said once, not per row.

    The last group field always stays a column, and a one-row table keeps all of them.
    """
    if len(s.table) < 2:
        return []
    return [f for f in s.by[:-1] if s.table[f].astype(str).nunique(dropna=False) == 1]


def _pct(mean: Any, std: Any, sep: str = " ± ") -> str:
    m, sd = _num(mean), _num(std)
    if m is None:
        return "n/a"
    return f"{100 * m:.2f}{sep}{'n/a' if sd is None else f'{100 * sd:.2f}'}"


def _p(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _wrap(text: str, width: int = MAX_WIDTH) -> list[str]:
    return textwrap.wrap(text, width=width, break_on_hyphens=False, subsequent_indent="  ") if text else []


def _human_rows(s: Summary, *, ci: bool) -> tuple[list[str], list[list[str]], list[str], list[str]]:
    """(header, rows, lines before the table, lines after it) of the terminal and Markdown tables."""
    const = constant_fields(s)
    fields = [f for f in s.by if f not in const]
    extra = s.extra[:MAX_EXTRA_COLUMNS]
    names = short_names(extra)
    head = [*fields, *(names[c] for c in extra), "n"]
    head += [HEADERS[m] for m in METRICS]
    if s.baseline is not None:
        head += [f"p {HEADERS[m].split()[0]}" for m in METRICS]
    body = []
    for _, r in s.table.iterrows():
        cells = [fmt_field(r[f]) for f in [*fields, *extra]] + [str(int(r["n"]))]
        for m in METRICS:
            cell = _pct(r[f"{m}_mean"], r[f"{m}_std"])
            c = _num(r[f"{m}_ci95"])
            if ci and c is not None:
                cell += f" (±{100 * c:.2f})"
            cells.append(cell)
        if s.baseline is not None:
            cells += [_p(r[f"{m}_p"]) for m in METRICS]
        body.append(cells)
    before = ["all rows: " + ", ".join(f"{f} {fmt_field(s.table[f].iloc[0])}" for f in const)] if const else []
    after = ["mean ± std over n seeds, in %" + (" (± half-width of the 95% CI)" if ci else "")]
    if s.baseline is not None:
        after.append(f"p: Welch's t-test against {s.baseline}")
    after.append(key_note(names))
    if len(s.extra) > len(extra):
        hidden = s.extra[len(extra):]
        after.append(f"{len(hidden)} more differing key(s) not shown ({', '.join(hidden)}): see --format csv")
    return head, body, before, [line for text in after for line in _wrap(text)]


def _align(cells: list[str]) -> list[str]:
    """Line up ``mean ± std (±ci)`` cells of one column on their parts, so that the ± signs align."""
    parts = [re.fullmatch(r"(\S+) ± (\S+)( \(±\S+\))?", c) for c in cells]
    if not all(parts):
        return cells
    cols = [[m.group(k) or "" for m in parts] for k in (1, 2, 3)]
    widths = [max(len(x) for x in col) for col in cols]
    return [f"{a.rjust(widths[0])} ± {b.rjust(widths[1])}{c.rjust(widths[2])}" for a, b, c in zip(*cols, strict=True)]


def _table(s: Summary) -> str:
    head, body, before, after = _human_rows(s, ci=True)
    numeric = {i for i, h in enumerate(head) if h == "n" or "%" in h or h.startswith("p ")}
    for i in numeric:
        for b, cell in zip(body, _align([b[i] for b in body]), strict=True):
            b[i] = cell
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [*before, line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    out += after
    return "\n".join(out) + "\n"


def _md(s: Summary) -> str:
    head, body, before, after = _human_rows(s, ci=False)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h == "n" or "%" in h or h.startswith("p ") else "---" for h in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
    notes = [*before, *after]
    return "\n".join(out) + "\n" + ("\n" + "  \n".join(notes) + "\n" if notes else "")


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _latex(s: Summary) -> str:
    extra = s.extra[:MAX_EXTRA_COLUMNS]
    fields = [*s.by, *extra]
    short = short_names(extra)
    # best per column, compared as printed (two decimals) so that printed ties are all bold
    best = {}
    for m in METRICS:
        means = [round(100 * v, 2) for v in s.table[f"{m}_mean"]]
        best[m] = BETTER[m](means)
    arrows = {"avg_acc": r"$\uparrow$", "forgetting": r"$\downarrow$", "bwt": r"$\uparrow$"}
    names = {"avg_acc": "ACC", "forgetting": "Forgetting", "bwt": "BWT"}
    cols = "l" * len(fields) + "r" + "c" * len(METRICS) + ("c" * len(METRICS) if s.baseline is not None else "")
    head = [_tex(short.get(f, f)) for f in fields] + ["$n$"] + [rf"{names[m]} (\%) {arrows[m]}" for m in METRICS]
    if s.baseline is not None:
        head += [f"$p$ {names[m]}" for m in METRICS]
    lines = [
        r"% seed-averaged results: mean $\pm$ std over seeds, in percent; needs \usepackage{booktabs}",
        *(f"% {line}" for line in [key_note(short)] if line),
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for _, r in s.table.iterrows():
        cells = [_tex(fmt_field(r[f])) for f in fields] + [str(int(r["n"]))]
        for m in METRICS:
            cell = _pct(r[f"{m}_mean"], r[f"{m}_std"], sep=r" $\pm$ ")
            if round(100 * float(r[f"{m}_mean"]), 2) == best[m]:
                cell = rf"\textbf{{{cell}}}"
            cells.append(cell)
        if s.baseline is not None:
            cells += [_tex(_p(r[f"{m}_p"])).replace("—", "--") for m in METRICS]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(s: Summary) -> str:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(records(s)).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def _json(s: Summary) -> str:
    return json.dumps(records(s), indent=2, allow_nan=False) + "\n"


_RENDERERS = {"table": _table, "md": _md, "latex": _latex, "csv": _csv, "json": _json}


def check_format(fmt: str) -> str:
    if fmt not in _RENDERERS:
        raise UserError(f"--format {fmt!r}: unknown format; valid formats: {', '.join(FORMATS)}")
    return fmt


def render(s: Summary, fmt: str = "table") -> str:
    """The summary as text in one of :data:`FORMATS`."""
    return _RENDERERS[check_format(fmt)](s)
