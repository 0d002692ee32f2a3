"""sweeps: Ray Tune + Optuna sweeps over whole task sequences (``pah sweep``).

Ray, Optuna and W&B are imported inside functions, so ``import sweeps`` (and ``pah
train``) works where only PyTorch is installed.
"""

from __future__ import annotations

from sweeps.driver import run_sweep
from sweeps.spec import Spec, load_spec, spec_names

__all__ = ["run_sweep", "Spec", "load_spec", "spec_names"]
