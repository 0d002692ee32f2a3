"""Render a :class:`~analysis.stats.Summary` as a terminal table, Markdown, LaTeX, CSV or JSON.

Tables show percentages (``mean ± std``); CSV and JSON are for machines and hold the
fractions of CONTRACT.md, with ``null`` where a statistic is undefined (one seed).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from analysis.load import METRICS
from analysis.stats import Summary
from pah.errors import UserError

__all__ = ["FORMATS", "render", "records", "check_format"]

FORMATS = ("table", "md", "latex", "csv", "json")
HEADERS = {"avg_acc": "ACC %", "forgetting": "Forgetting %", "bwt": "BWT %"}
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
    """A group field for people: '—' where the key does not apply, 32 rather than 32.0."""
    v = _plain(v)
    if v is None:
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _pct(mean: Any, std: Any, sep: str = " ± ") -> str:
    m, sd = _num(mean), _num(std)
    if m is None:
        return "n/a"
    return f"{100 * m:.2f}{sep}{'n/a' if sd is None else f'{100 * sd:.2f}'}"


def _p(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _human_rows(s: Summary, *, ci: bool) -> tuple[list[str], list[list[str]]]:
    extra = s.extra[:MAX_EXTRA_COLUMNS]
    head = [*s.by, *extra, "n"]
    for m in METRICS:
        head.append(HEADERS[m] + (" (±95% CI)" if ci else ""))
    if s.baseline is not None:
        head += [f"p {HEADERS[m].split()[0]}" for m in METRICS]
    body = []
    for _, r in s.table.iterrows():
        cells = [fmt_field(r[f]) for f in [*s.by, *extra]] + [str(int(r["n"]))]
        for m in METRICS:
            cell = _pct(r[f"{m}_mean"], r[f"{m}_std"])
            c = _num(r[f"{m}_ci95"])
            if ci and c is not None:
                cell += f" (±{100 * c:.2f})"
            cells.append(cell)
        if s.baseline is not None:
            cells += [_p(r[f"{m}_p"]) for m in METRICS]
        body.append(cells)
    return head, body


def _table(s: Summary) -> str:
    head, body = _human_rows(s, ci=True)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = {i for i, h in enumerate(head) if h == "n" or "%" in h or h.startswith("p ")}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    if s.baseline is not None:
        out.append(f"p: Welch's t-test against {s.baseline}")
    return "\n".join(out) + "\n"


def _md(s: Summary) -> str:
    head, body = _human_rows(s, ci=False)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h == "n" or "%" in h or h.startswith("p ") else "---" for h in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
    return "\n".join(out) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _latex(s: Summary) -> str:
    extra = s.extra[:MAX_EXTRA_COLUMNS]
    fields = [*s.by, *extra]
    # best per column, compared as printed (two decimals) so that printed ties are all bold
    best = {}
    for m in METRICS:
        means = [round(100 * v, 2) for v in s.table[f"{m}_mean"]]
        best[m] = BETTER[m](means)
    arrows = {"avg_acc": r"$\uparrow$", "forgetting": r"$\downarrow$", "bwt": r"$\uparrow$"}
    names = {"avg_acc": "ACC", "forgetting": "Forgetting", "bwt": "BWT"}
    cols = "l" * len(fields) + "r" + "c" * len(METRICS) + ("c" * len(METRICS) if s.baseline is not None else "")
    head = [_tex(f) for f in fields] + ["$n$"] + [rf"{names[m]} (\%) {arrows[m]}" for m in METRICS]
    if s.baseline is not None:
        head += [f"$p$ {names[m]}" for m in METRICS]
    lines = [
        r"% seed-averaged results: mean $\pm$ std over seeds, in percent; needs \usepackage{booktabs}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for _, r in s.table.iterrows():
        cells = [_tex(r[f]) for f in fields] + [str(int(r["n"]))]
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
