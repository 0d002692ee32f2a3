"""analysis: seed-averaged tables, significance tests and plots from ``result.json`` files.

``summarize_dirs(paths)`` is the one call most code needs; ``load_results`` gives the tidy
per-trial table (pandas), ``aggregate`` the per-group statistics, ``render`` the text
formats, ``make_plots`` the figures and ``write_html`` the self-contained report.
``trial_status`` says what became of a trial without a result; ``compare_with_base`` and
``sweep_summary`` compare a sweep's best config with its base config; ``sweep_report`` reads a
whole sweep once, for what ``pah sweep`` prints and writes at its end. ``pah analyze`` is
``analysis.cli``.
"""

from __future__ import annotations

from analysis.api import analyze, notes, summarize_dirs
from analysis.compare import BaseComparison, compare_with_base
from analysis.html import write_html
from analysis.load import Results, load_results
from analysis.plots import make_plots
from analysis.report import FORMATS, records, render
from analysis.states import TrialState, TrialStatus, trial_status
from analysis.stats import Summary, aggregate
from analysis.sweep import sweep_summary
from analysis.sweep_report import SweepReport, sweep_report

__all__ = [
    "FORMATS",
    "BaseComparison",
    "Results",
    "Summary",
    "SweepReport",
    "TrialState",
    "TrialStatus",
    "aggregate",
    "analyze",
    "compare_with_base",
    "load_results",
    "make_plots",
    "notes",
    "records",
    "render",
    "summarize_dirs",
    "sweep_report",
    "sweep_summary",
    "trial_status",
    "write_html",
]
