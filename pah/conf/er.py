"""Experience Replay's hyperparameters (the implementation: pah/methods/er.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pah.conf.base import PARAMS
from pah.conf.replay import ReplayParams

__all__ = ["ERParams"]


@PARAMS.register("er")
@dataclass(frozen=True)
class ERParams(ReplayParams):
    name: str = "er"
    fill: Literal["stream", "task_end"] = "stream"
    weighting: Literal["sum", "per-task"] = "sum"

    #: the buffer size is part of the comparison (fixed), not searched
    SPACE: ClassVar[dict[str, dict]] = {"weighting": {"choice": ["sum", "per-task"]}}

