"""The HTML table both the report (analysis/html.py) and a study's section of it
(analysis/study_table.py) are drawn with: below both, so neither imports the other for it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["html_table"]


def html_table(head: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = (),
               classes: Sequence[str] | None = None) -> str:
    """An HTML table from already-escaped cells."""
    num = set(numeric)
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="num">{c}</td>' if j in num else f"<td>{c}</td>"
                                          for j, c in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
