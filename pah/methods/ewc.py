"""Online EWC (Schwarz et al. 2018), multi-head.

After each task the diagonal Fisher of the backbone is estimated on that task's
training data and folded into one running estimate (``F <- gamma * F + F_t``), anchored
at the current weights; the penalty ``lambda/2 * sum F (theta - theta*)^2`` therefore
costs the same at every task. The Fisher uses squared mini-batch gradients (as
Avalanche does), not per-sample ones: cheaper, a slight underestimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pah.config import MethodParams
from pah.data import to_float
from pah.methods.base import METHODS
from pah.methods.finetune import Finetune


@dataclass(frozen=True)
class EWCParams(MethodParams):
    name: str = "ewc"
    ewc_lambda: float = 100.0
    gamma: float = 1.0
    fisher_batches: int = 32


@METHODS.register("ewc")
class EWC(Finetune):
    Params = EWCParams

    def __init__(self, params, shape, backbone):
        super().__init__(params, shape, backbone)
        self._names = [n for n, _ in self.backbone.named_parameters()]
        for i, p in enumerate(self.backbone.parameters()):
            self.register_buffer(f"fisher_{i}", torch.zeros_like(p))
            self.register_buffer(f"anchor_{i}", torch.zeros_like(p))

    def _buffers_of(self, kind: str) -> list[torch.Tensor]:
        return [getattr(self, f"{kind}_{i}") for i in range(len(self._names))]

    def loss(self, batch):
        ce, parts = super().loss(batch)
        if batch.task == 0:
            return ce, parts
        params = list(self.backbone.parameters())
        diffs = torch._foreach_sub(params, self._buffers_of("anchor"))
        penalty = sum((f * d * d).sum() for f, d in zip(self._buffers_of("fisher"), diffs, strict=True))
        return ce + 0.5 * self.params.ewc_lambda * penalty, {**parts, "ewc": penalty.detach()}

    def end_task(self, task, data, norm):
        super().end_task(task, data, norm)
        fisher = [torch.zeros_like(p) for p in self.backbone.parameters()]
        was_training = self.training
        self.eval()  # BatchNorm in inference mode, as at test time
        n = data.x_train.shape[0]
        bs = 64
        batches = 0
        for start in range(0, min(n, bs * self.params.fisher_batches), bs):
            x = to_float(data.x_train[start : start + bs], *norm)
            self.zero_grad(set_to_none=True)
            F.cross_entropy(self.logits(x, task).float(), data.y_train[start : start + bs]).backward()
            for f, p in zip(fisher, self.backbone.parameters(), strict=True):
                if p.grad is not None:
                    f.add_(p.grad.detach() ** 2)
            batches += 1
        self.zero_grad(set_to_none=True)
        self.train(was_training)
        with torch.no_grad():
            for f_old, f_new, a, p in zip(
                self._buffers_of("fisher"), fisher, self._buffers_of("anchor"), self.backbone.parameters(), strict=True
            ):
                f_old.mul_(self.params.gamma).add_(f_new / max(batches, 1))
                a.copy_(p.detach())
