"""Run a Ray Tune experiment driven by Optuna (placeholder until the sweeps package lands)."""

from __future__ import annotations

import argparse

from pah.errors import UserError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?")


def run(args: argparse.Namespace) -> int:
    raise UserError("pah sweep is not available in this build yet")
