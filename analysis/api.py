"""The one-call API: directories in, seed-averaged table out (what ``pah sweep`` prints at its end)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from analysis.load import Results, load_results
from analysis.report import check_format, render
from analysis.stats import Summary, aggregate

__all__ = ["analyze", "notes", "summarize_dirs"]


def analyze(
    paths: Iterable[str | Path],
    *,
    by: str | Sequence[str] | None = None,
    baseline: str | None = None,
) -> tuple[Results, Summary]:
    """Load every result under ``paths`` and aggregate it. Raises UserError for bad input."""
    results = load_results(paths)
    return results, aggregate(results.frame, by, baseline=baseline)


def notes(results: Results, summary: Summary) -> list[str]:
    """The lines worth telling a user on stderr: skipped files, groups with too few seeds."""
    lines = results.notes()
    small = summary.small_groups()
    if small:
        shown = ", ".join(small[:5]) + (", ..." if len(small) > 5 else "")
        lines.append(f"warning: {len(small)} group(s) with fewer than 3 seeds, std and CI are unreliable or n/a: {shown}")
    return lines


def summarize_dirs(
    paths: Iterable[str | Path],
    by: str | Sequence[str] | None = None,
    fmt: str = "table",
    *,
    baseline: str | None = None,
    quiet: bool = False,
) -> str:
    """The seed-averaged table of every result.json under ``paths`` as text in format ``fmt``.

    Skipped files and groups with fewer than 3 seeds are reported on stderr unless ``quiet``.
    Raises :class:`pah.errors.UserError` for a missing path, no results, an unknown field or format.
    """
    check_format(fmt)
    results, summary = analyze(paths, by=by, baseline=baseline)
    if not quiet:
        for line in notes(results, summary):
            print(line, file=sys.stderr)
    return render(summary, fmt)
