"""analysis: seed-averaged tables, significance tests and plots from ``result.json`` files.

``summarize_dirs(paths)`` is the one call most code needs; ``load_results`` gives the tidy
per-trial table (pandas), ``aggregate`` the per-group statistics, ``render`` the text
formats and ``make_plots`` the figures. ``pah analyze`` is ``analysis.cli``.
"""

from __future__ import annotations

from analysis.api import analyze, notes, summarize_dirs
from analysis.load import Results, load_results
from analysis.plots import make_plots
from analysis.report import FORMATS, records, render
from analysis.stats import Summary, aggregate

__all__ = [
    "FORMATS",
    "Results",
    "Summary",
    "aggregate",
    "analyze",
    "load_results",
    "make_plots",
    "notes",
    "records",
    "render",
    "summarize_dirs",
]
