"""Seed-averaged tables (and plots) from one or more sweep or trial directories.

Finds every result.json below each DIR (a sweep, an experiment or a single trial),
groups trials by config_id (or --by FIELD,...) and prints mean ± std over seeds, the
95% Student-t confidence interval and, with --baseline, Welch's t-test p-values.
Unfinished trials (a checkpoint but no result) are counted and skipped; malformed
files are named on stderr and skipped.

examples:
  pah analyze runs/sweeps/quickstart
  pah analyze runs/ --by method,dataset --baseline finetune
  pah analyze runs/ --format latex --out table.tex --plots figures/
"""

from __future__ import annotations

import argparse
import sys

from analysis.api import notes
from analysis.load import load_results
from analysis.report import FORMATS, check_format, render
from analysis.stats import aggregate
from pah.errors import UserError
from pah.io import atomic_write_bytes


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = __doc__.split("\n\n", 1)[1]  # the description's details and the examples
    p.add_argument("dirs", nargs="*", metavar="DIR", help="sweep, experiment or trial directories (or result.json files)")
    p.add_argument("--by", metavar="FIELD,...", help="group by these fields (default: config_id, shown with method and dataset); "
                   "any result field, e.g. method,dataset or a config key such as train.lr")
    p.add_argument("--format", default="table", metavar="FORMAT", help=f"one of {', '.join(FORMATS)} (default: table)")
    p.add_argument("--out", metavar="FILE", help="write the table here instead of stdout")
    p.add_argument("--plots", metavar="DIR", help="write figures (PNG and PDF) into this directory")
    p.add_argument("--baseline", metavar="NAME", help="add Welch's t-test p-values against this group "
                   "(its label, e.g. 'finetune', or one of its field values)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read results from these W&B runs (needs the network)")


def run(args: argparse.Namespace) -> int:
    # ---- validate everything before reading or writing anything
    check_format(args.format)
    if not args.dirs and not args.wandb:
        raise UserError("DIR: give at least one sweep or trial directory (or --wandb ENTITY/PROJECT)")
    extra = []
    if args.wandb:
        from analysis.wandb_runs import wandb_results

        extra = wandb_results(args.wandb)

    # ---- load, aggregate, report
    results = load_results(args.dirs, extra=extra)
    summary = aggregate(results.frame, args.by, baseline=args.baseline)
    text = render(summary, args.format)
    for line in notes(results, summary):
        print(line, file=sys.stderr)
    c = results.counts()
    print(f"analyze: {c['finished']} finished trial(s) in {len(summary.table)} group(s); "
          f"{c['unfinished']} unfinished, {c['malformed']} malformed skipped", file=sys.stderr)

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
    return 0
