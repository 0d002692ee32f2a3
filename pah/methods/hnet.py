"""Hypernetwork heads conditioned on plain learned task embeddings (the PAH paper's ablation).

Same hypernetwork, same distillation of old tasks' logits as PAH; the conditioning of
each task is a learned vector instead of a grid of prototypes, and there are no
prototype losses. An old task's embedding keeps learning through the distillation of its
logits (``old_conditions: learn``), so its head can follow the shared hypernetwork.
"""

from __future__ import annotations

import torch
from torch import nn

from pah.conf.hnet import HNetParams
from pah.methods.base import METHODS
from pah.methods.lwf import OldLogitDistillation
from pah.models.heads import HyperHeads


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
