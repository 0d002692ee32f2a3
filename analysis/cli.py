"""Seed-averaged tables (and plots) from one or more sweep or trial directories.

Finds every result.json below each DIR (a sweep, an experiment or a single trial),
groups trials by config_id (or --by FIELD,...) and prints mean ± std over seeds, the
95% Student-t confidence interval and, with --baseline, Welch's t-test p-values.
Trials without a result are counted by state on stderr (stopped early by the scheduler,
errored with the error's first line, unfinished i.e. killed and resumable) and skipped;
malformed files are named on stderr and skipped. For a sweep directory, stderr also says
how the best confirmed config compares with the spec's base config. --html writes one
self-contained page with all of it: tables, every plot, importances, spec, environment.

examples:
  pah analyze runs/sweeps/quickstart --html report.html
  pah analyze runs/ --by method,dataset --baseline finetune
  pah analyze runs/ --format latex --out table.tex --plots figures/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.api import notes
from analysis.load import load_results
from analysis.report import FORMATS, check_format, render
from analysis.stats import aggregate
from pah.errors import UserError
from pah.io import atomic_write_bytes, check_output_dir, check_output_file


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the description's details and the examples
    p.add_argument("dirs", nargs="*", metavar="DIR", help="sweep, experiment or trial directories (or result.json files); "
                   "a sweep on object storage by its URI (s3://BUCKET/PREFIX/NAME, gs://...)")
    p.add_argument("--by", metavar="FIELD,...", help="group by these fields (default: config_id, shown with method and dataset); "
                   "any result field, e.g. method,dataset or a config key such as train.lr")
    p.add_argument("--format", default="table", metavar="FORMAT", help=f"one of {', '.join(FORMATS)} (default: table)")
    p.add_argument("--out", metavar="FILE", help="write the table here instead of stdout")
    p.add_argument("--plots", metavar="DIR", help="write figures (PNG and PDF) into this directory")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML report (tables, every plot, trial "
                   "states, importances, spec, environment; opens offline)")
    p.add_argument("--baseline", metavar="NAME", help="add Welch's t-test p-values against this group "
                   "(its label, e.g. 'finetune', or one of its field values)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read results from these W&B runs (needs the network)")


def run(args: argparse.Namespace) -> int:
    from pah import storage

    uris = [d for d in args.dirs if storage.is_uri(d)]
    if not uris:
        return _run(args)
    import shutil
    import tempfile

    for uri in uris:  # exit 2 before reading anything: no bucket, no access, no endpoint, no sweep
        storage.check(uri, "DIR", write=False)
    tmp = Path(tempfile.mkdtemp(prefix="pah-analyze-"))
    try:  # the trials' small files (never Tune's dir, the checkpoints or W&B's runs), analyzed as a local copy
        local = []
        for i, d in enumerate(args.dirs):
            if storage.is_uri(d):
                d = tmp / str(i) / d.rstrip("/").rsplit("/", 1)[-1]
                storage.download(args.dirs[i], d, skip_dirs=(*storage.SKIP_DIRS, "wandb"))
            local.append(str(d))
        args.dirs = local
        return _run(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    # ---- validate everything before reading or writing anything
    check_format(args.format)
    if args.out:
        check_output_file(args.out, "--out")
    if args.plots:
        check_output_dir(args.plots, "--plots")
    if args.html:
        _check_html(args.html)
    if not args.dirs and not args.wandb:
        raise UserError("DIR: give at least one sweep or trial directory (or --wandb ENTITY/PROJECT)")
    extra = []
    if args.wandb:
        from analysis.wandb_runs import wandb_results

        extra = wandb_results(args.wandb)

    # ---- load, aggregate, compare, render
    results = load_results(args.dirs, extra=extra)
    summary = aggregate(results.frame, args.by, baseline=args.baseline)
    from analysis.sweep import find_sweeps

    sweeps = find_sweeps(args.dirs)
    reports = None
    if args.html:  # the report lists every trial's state: each sweep read once (analysis.sweep_report)
        from analysis.sweep_report import report_for

        alone = len(args.dirs) == 1 and not args.wandb  # the results are a study's own: its table from them
        reports = [report_for(sw, results, study_results=alone) for sw in sweeps]
    study = _study(args, results, reports)
    if study is not None:  # one row per method (analysis/study_table.py); --by config_id gives every config
        from analysis.study_table import render_study

        text = render_study(study, args.format)
    else:
        text = render(summary, args.format)
    for line in notes(results, summary):
        print(line, file=sys.stderr)
    comparisons = ([(r.info, r.comparison) for r in reports] if reports is not None
                   else [(sw, sw.comparison(results.frame)) for sw in sweeps])
    for sweep, cmp in comparisons:
        if cmp is not None:
            for line in cmp.lines(sweep.describe_configs()):
                print(line, file=sys.stderr)
    c = results.counts()
    print(f"analyze: {c['finished']} finished trial(s) in {len(summary.table)} group(s); skipped: "
          f"{c['stopped']} stopped early by the scheduler, {c['errored']} errored, {c['unfinished']} unfinished, "
          f"{c['malformed']} malformed", file=sys.stderr)

    # ---- outputs
    if args.out:
        atomic_write_bytes(args.out, text.encode())
        print(f"out: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plots:
        from analysis.plots import make_plots

        files = make_plots(results.frame, summary, args.plots, sweep_dirs=args.dirs)
        print(f"plots: {args.plots} ({len(files)} files)", file=sys.stderr)
    if args.html:
        from analysis.html import write_html

        write_html(args.dirs, args.html, results=results, summary=summary, reports=reports)
        print(f"html: {args.html}", file=sys.stderr)
    return 0


def _study(args: argparse.Namespace, results, reports):
    """The study table when the one DIR is a study and neither --by nor --baseline asks for another grouping
    (from the ``results`` loaded already: that DIR's alone; or the one its ``reports`` hold)."""
    if len(args.dirs) != 1 or args.by is not None or args.baseline is not None or args.wandb:
        return None
    if reports is not None:
        return reports[0].study if reports else None
    from analysis.study_table import study_table

    return study_table(args.dirs[0], results=results)


def _check_html(value: str) -> None:
    """The report is one file, into a directory that exists (a typo in it is more likely than a wish for new dirs)."""
    path = Path(value)
    if path.is_dir():
        raise UserError(f"--html {value}: is a directory; give a file name such as {path / 'report.html'}")
    if not path.parent.is_dir():
        raise UserError(f"--html {value}: directory {path.parent} does not exist")
