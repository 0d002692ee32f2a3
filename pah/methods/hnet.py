"""Hypernetwork heads conditioned on plain learned task embeddings (the PAH paper's ablation).

Same hypernetwork, same distillation of old tasks' logits as PAH; the conditioning of
each task is a learned vector instead of a grid of prototypes, and there are no
prototype losses. An old task's embedding is frozen once its task is over.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    hyper_layers: int = 1
    #: weight of the old-task logit distillation (the reference's "stability")
    lambda_kd: float = 0.5
    temperature: float = 2.0


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
        return HyperHeads(self.make_conditions(), self.shape.classes_per_task, dim, p.hyper_hidden, p.hyper_layers)

    def begin_task(self, task, data, norm):
        for i, c in enumerate(self.heads.conditions):
            c.requires_grad_(i == task)  # old conditions are frozen; future ones wait for their task
        super().begin_task(task, data, norm)
