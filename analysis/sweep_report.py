"""A sweep's results read once, for what ``pah sweep`` prints and writes when it ends.

One path, each step once and in this order:

1. **load**: every ``result.json`` of the sweep in one walk (:func:`analysis.load.load_results`)
   and every trial's state (:func:`analysis.sweep.sweep_trials`);
2. **aggregate**: the seed-averaged table of the rows the sweep's table holds (the confirmed runs;
   every search trial without a confirm phase: :meth:`SweepInfo.table_rows`), or a study's table
   (:func:`analysis.study_table.study_table`, from the same results and states);
3. **compare**: the best confirmed config against the base config (:mod:`analysis.compare`);
4. **render**: the lines the driver prints (:meth:`SweepReport.text`), then the study's files and
   ``SWEEP/report.html`` (:func:`analysis.html.write_html` takes the report and reads nothing again).

``pah analyze SWEEP`` builds the same report from the results it loaded (:func:`report_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.compare import BaseComparison
from analysis.load import Results, load_results
from analysis.report import render
from analysis.states import TrialStatus
from analysis.stats import Summary, aggregate
from analysis.study_table import StudyTable, is_study, study_summary, study_table
from analysis.sweep import STATE, SweepInfo, read_sweep, summary_lines, sweep_trials
from pah.errors import UserError

__all__ = ["SweepReport", "sweep_report", "report_for"]


@dataclass
class SweepReport:
    """One sweep, read: its results, its trials' states, its table, the comparison, a study's table."""

    info: SweepInfo
    results: Results | None  # every finished trial of the sweep; None when not one finished
    statuses: list[TrialStatus]  # every trial of the sweep, search phase first
    comparison: BaseComparison | None  # the best confirmed config against the base config
    study: StudyTable | None = None  # a study's table (sweeps/study.py); None for a plain sweep
    table: Summary | None = None  # the rows of the sweep's table, seed-averaged (see SweepInfo.table_rows)
    #: whether the table holds every finished trial of the sweep (no confirm phase): it is then the report's too
    table_is_all: bool = False

    @property
    def title(self) -> str:
        return "confirmed configs, seed-averaged" if self.info.confirms else "all configs, seed-averaged"

    def text(self) -> str:
        """What ``pah sweep`` prints at its end: a study's table, or the sweep's table with the trial
        states, the phase times and the best config against the base config under it."""
        if self.study is not None:
            return study_summary(self.info.dir, table=self.study)
        body = render(self.table, "table") if self.table is not None else "(no finished trials)\n"
        lines = summary_lines(self.info, self.statuses, self.comparison, compared=self.results is not None)
        return f"\n{self.title}:\n" + body + "".join(f"\n{line}" for line in lines) + "\n"

    def summary(self) -> Summary | None:
        """Every config of the sweep, seed-averaged (the HTML report's table): the table itself when it
        holds every trial, else aggregated here. None when no trial finished."""
        if self.results is None:
            return None
        return self.table if self.table_is_all else aggregate(self.results.frame)


def report_for(info: SweepInfo, results: Results | None, *, statuses: Sequence[TrialStatus] | None = None,
               table: bool = False, study_results: bool = True) -> SweepReport:
    """The report of the sweep ``info`` from ``results`` (a load that holds its results; None: none).

    ``statuses``: its trials' states, read here if not given. ``table``: aggregate the sweep's table too
    (what the driver prints). ``study_results``: a study's table from ``results`` (False: from a load of
    the study alone, when ``results`` holds other directories whose duplicates could hide its rows).
    """
    statuses = list(statuses) if statuses is not None else sweep_trials(info.dir)
    study = None
    summary, table_is_all = None, False
    if is_study(info):
        study = study_table(info.dir, results=results if study_results else None, info=info, statuses=statuses)
    elif table and results is not None:
        rows = info.table_rows(results.frame)
        table_is_all = len(rows) == len(results.frame)
        summary = aggregate(rows) if len(rows) else None
    comparison = info.comparison(results.frame) if results is not None else None
    return SweepReport(info, results, statuses, comparison, study=study, table=summary, table_is_all=table_is_all)


def sweep_report(sweep_dir: str | Path) -> SweepReport:
    """Read the sweep in ``sweep_dir`` once: load, aggregate, compare (see the module docstring)."""
    info = read_sweep(sweep_dir)
    if info is None:
        raise UserError(f"{sweep_dir}: not a sweep directory (no readable {STATE})")
    try:
        results = load_results([info.dir])
    except UserError:  # not one finished trial (yet)
        results = None
    return report_for(info, results, table=True)
