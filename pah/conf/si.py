"""Synaptic Intelligence's hyperparameters (the implementation: pah/methods/si.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pah.conf.base import PARAMS, MethodParams, check

__all__ = ["SIParams"]


@PARAMS.register("si")
@dataclass(frozen=True)
class SIParams(MethodParams):
    name: str = "si"
    #: strength of the penalty c * sum Omega (theta - theta*)^2
    c: float = 10.0
    #: damping xi of Omega = W / (delta^2 + xi): bounds it where a parameter barely moved
    xi: float = 0.1

    SPACE: ClassVar[dict[str, dict]] = {
        "c": {"loguniform": [0.01, 1e4]},
        "xi": {"loguniform": [1e-3, 1.0]},
    }

    def __post_init__(self) -> None:
        check(self.c >= 0, "method.c", self.c, ">= 0")
        check(self.xi >= 0, "method.xi", self.xi, ">= 0")
