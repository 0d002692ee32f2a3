"""The hypernetwork methods' shared hyperparameters, and the task-embedding hypernetwork's
(the implementation: pah/methods/hnet.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pah.conf.base import PARAMS, MethodParams

__all__ = ["HyperParams", "HNetParams"]


@dataclass(frozen=True)
class HyperParams(MethodParams):
    """What every hypernetwork method has: the hypernetwork's size and the logit distillation."""

    hyper_hidden: int = 64
    #: hidden layers of the hypernetwork (the reference's "hyper_hidden_layers: 1" is 2 here)
    hyper_layers: int = 2
    #: biases in the hypernetwork (off, as in the reference: see Hypernetwork)
    hyper_bias: bool = False
    #: weight of the old-task logit distillation (the reference's "stability")
    lambda_kd: float = 0.5
    temperature: float = 2.0
    #: how the KL terms of the old tasks add up: see LwFParams.kd_reduction
    kd_reduction: Literal["sum", "mean"] = "sum"
    #: old tasks' conditions (embeddings, prototypes): "learn" through distillation, as the
    #: reference does, so an old head can follow the shared hypernetwork; or "freeze"
    old_conditions: Literal["learn", "freeze"] = "learn"


@PARAMS.register("hnet")
@dataclass(frozen=True)
class HNetParams(HyperParams):
    name: str = "hnet"
    embedding_dim: int = 32

    SPACE: ClassVar[dict[str, dict]] = {
        "lambda_kd": {"loguniform": [0.05, 5.0]},
        "temperature": {"choice": [1.0, 2.0, 4.0]},
        "hyper_hidden": {"choice": [16, 32, 64, 128]},
        "embedding_dim": {"choice": [16, 32, 64]},
    }

