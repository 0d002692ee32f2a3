"""A-GEM's hyperparameters (the implementation: pah/methods/agem.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pah.conf.base import PARAMS
from pah.conf.replay import ReplayParams

__all__ = ["AGEMParams"]


@PARAMS.register("agem")
@dataclass(frozen=True)
class AGEMParams(ReplayParams):
    name: str = "agem"
    #: the memory batch of the reference gradient: 256, as in Chaudhry et al.'s code (EPS_MEM_BATCH_SIZE),
    #: drawn with replacement (a smaller memory repeats samples)
    replay_batch_size: int | None = 256

    #: the memory size is part of the comparison (fixed); A-GEM has no loss weight to search
    SPACE: ClassVar[dict[str, dict]] = {"replay_batch_size": {"choice": [32, 64, 128, 256]}}

