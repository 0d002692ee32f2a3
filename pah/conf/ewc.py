"""Online EWC's hyperparameters (the implementation: pah/methods/ewc.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pah.conf.base import PARAMS, MethodParams, check

__all__ = ["EWCParams"]


@PARAMS.register("ewc")
@dataclass(frozen=True)
class EWCParams(MethodParams):
    name: str = "ewc"
    #: penalty strength lambda in lambda/2 * sum F (theta - theta*)^2, for a per-sample Fisher
    #: (not portable from a Fisher of squared mini-batch gradients: docs/baselines.md)
    ewc_lambda: float = 1000.0
    #: online EWC's decay of the earlier tasks' Fisher (1: plain sum over tasks)
    gamma: float = 1.0
    #: "exact": expectation over the model's predictive distribution; "empirical": true labels
    fisher: Literal["exact", "empirical"] = "exact"
    #: training images per task the Fisher is estimated on (a random subset); null: all of them
    fisher_samples: int | None = 1000

    SPACE: ClassVar[dict[str, dict]] = {
        "ewc_lambda": {"loguniform": [1.0, 1e6]},
        "gamma": {"uniform": [0.5, 1.0]},
    }

    def __post_init__(self) -> None:
        check(self.ewc_lambda >= 0, "method.ewc_lambda", self.ewc_lambda, ">= 0")
        check(0 <= self.gamma <= 1, "method.gamma", self.gamma, "in [0, 1]")
        check(self.fisher_samples is None or self.fisher_samples >= 1, "method.fisher_samples", self.fisher_samples, ">= 1")
