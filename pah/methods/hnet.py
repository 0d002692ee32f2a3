"""Hypernetwork heads conditioned on plain learned task embeddings (the PAH paper's ablation).

Same hypernetwork, same distillation of old tasks' logits as PAH; the conditioning of
each task is a learned vector instead of a grid of prototypes, and there are no
prototype losses. An old task's embedding keeps learning through the distillation of its
logits (``old_conditions: learn``), so its head can follow the shared hypernetwork.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pah.config import MethodParams
from pah.methods.base import METHODS
from pah.methods.lwf import OldLogitDistillation
from pah.models.heads import HyperHeads


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


@dataclass(frozen=True)
class HNetParams(HyperParams):
    name: str = "hnet"
    embedding_dim: int = 32


@METHODS.register("hnet")
class HNet(OldLogitDistillation):
    Params = HNetParams

    def make_conditions(self) -> nn.ParameterList:
        return nn.ParameterList(nn.Parameter(torch.randn(self.params.embedding_dim)) for _ in range(self.shape.num_tasks))

    def make_heads(self, dim):
        p = self.params
        return HyperHeads(self.make_conditions(), self.shape.classes_per_task, dim, p.hyper_hidden, p.hyper_layers, p.hyper_bias)

    def begin_task(self, task, data, norm):
        for i, c in enumerate(self.heads.conditions):
            # old conditions keep learning through the distillation terms (unless frozen); future ones wait
            c.requires_grad_(i == task or (i < task and self.params.old_conditions == "learn"))
        super().begin_task(task, data, norm)
