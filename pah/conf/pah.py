"""Prototype-Augmented Hypernetworks' hyperparameters (the implementation: pah/methods/pah.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pah.conf.base import PARAMS
from pah.conf.hnet import HyperParams

__all__ = ["PAHParams"]


@PARAMS.register("pah")
@dataclass(frozen=True)
class PAHParams(HyperParams):
    name: str = "pah"
    hyper_hidden: int = 16
    prototype_size: int = 10
    #: 1 (grey prototypes, the reference's choice) or the images' channel count
    prototype_channels: int = 1
    prototype_init: Literal["image", "random"] = "image"
    lambda_proto_ce: float = 1.0
    lambda_proto_kd: float = 1.0
    #: old prototypes distilled per step (sampled); 0 means classes_per_task
    proto_replay: int = 0
    #: what the prototype losses train: "prototypes" only (the reference's behaviour), or
    #: "all" (also backbone and hypernetwork: an ablation, it forgets; see docs/method.md)
    proto_grad: Literal["prototypes", "all"] = "prototypes"

    SPACE: ClassVar[dict[str, dict]] = {
        "lambda_kd": {"loguniform": [0.05, 5.0]},
        "lambda_proto_kd": {"loguniform": [0.05, 5.0]},
        "temperature": {"choice": [1.0, 2.0, 4.0]},
        "hyper_hidden": {"choice": [16, 32, 64]},
    }

