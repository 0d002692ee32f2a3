"""Learning without Forgetting's hyperparameters (the implementation: pah/methods/lwf.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pah.conf.base import PARAMS, MethodParams

__all__ = ["LwFParams"]


@PARAMS.register("lwf")
@dataclass(frozen=True)
class LwFParams(MethodParams):
    name: str = "lwf"
    lambda_kd: float = 1.0
    temperature: float = 2.0
    #: "sum": every old task's KL has weight lambda_kd, however many tasks came before (LwF's
    #: and the reference's choice); "mean": the old tasks share lambda_kd
    kd_reduction: Literal["sum", "mean"] = "sum"

    SPACE: ClassVar[dict[str, dict]] = {
        "lambda_kd": {"loguniform": [0.1, 10.0]},
        "temperature": {"choice": [1.0, 2.0, 4.0]},
    }

