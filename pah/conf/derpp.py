"""DER++'s hyperparameters (the implementation: pah/methods/derpp.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pah.conf.base import PARAMS, check
from pah.conf.replay import ReplayParams

__all__ = ["DERppParams"]


@PARAMS.register("derpp")
@dataclass(frozen=True)
class DERppParams(ReplayParams):
    name: str = "derpp"
    #: weight of the logit-matching term (the paper's buffer-200 settings: 0.1 to 0.2)
    alpha: float = 0.1
    #: weight of the label term on a second draw (the paper's buffer-200 settings: 0.5 to 1.0)
    beta: float = 0.5

    SPACE: ClassVar[dict[str, dict]] = {"alpha": {"uniform": [0.05, 1.0]}, "beta": {"uniform": [0.1, 1.0]}}

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.alpha >= 0, "method.alpha", self.alpha, ">= 0")
        check(self.beta >= 0, "method.beta", self.beta, ">= 0")

