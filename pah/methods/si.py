"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017), multi-head.

While a task trains, every backbone parameter accumulates its contribution to the drop of
the task's own loss along the training path: after each optimizer update,
``W += -g * delta_step``, where ``g`` is the gradient of the *unregularised* loss (the
current task's cross-entropy, as in the paper's code; GMvandeVen's harness uses the total
loss instead) at the weights the step started from, and ``delta_step`` the update. At the end
of the task, ``Omega += W / (delta_task^2 + xi)``, with ``delta_task`` the parameter's change
over the whole task, and the anchor moves to the current weights. The loss of later tasks is
``CE + c * sum Omega (theta - theta*)^2``.

Heads are not regularised and get no importance: in the task-incremental setting a task's
head is trained by its own task only, so no later task's loss pulls it (the reference
regularises its shared output layer, whose other tasks' units get no gradient either).

Cost per step is flat in the number of tasks: a few elementwise passes over the backbone's
parameters, no second backward pass, no host sync (see :meth:`SI.after_step`), so the step
can be captured as a CUDA graph like any other.
"""

from __future__ import annotations

import torch

from pah.conf.si import SIParams
from pah.methods.base import METHODS
from pah.methods.finetune import Finetune


@METHODS.register("si")
class SI(Finetune):
    Params = SIParams

    def __init__(self, params, shape, backbone):
        super().__init__(params, shape, backbone)
        self._n = len(list(self.backbone.parameters()))
        for i, p in enumerate(self.backbone.parameters()):
            self.register_buffer(f"omega_{i}", torch.zeros_like(p))
            # theta*: the weights at the end of the previous task (at the start, the initial ones)
            self.register_buffer(f"anchor_{i}", p.detach().clone())
            # this task's path integral W and the weights before the current step: rebuilt at
            # every task's start, so they are not part of a checkpoint
            self.register_buffer(f"path_{i}", torch.zeros_like(p), persistent=False)
            self.register_buffer(f"prev_{i}", torch.zeros_like(p), persistent=False)
        self._penalised = False

    def _bufs(self, kind: str) -> list[torch.Tensor]:
        return [getattr(self, f"{kind}_{i}") for i in range(self._n)]

    def begin_task(self, task, data, norm):
        super().begin_task(task, data, norm)
        with torch.no_grad():
            torch._foreach_zero_(self._bufs("path"))
            torch._foreach_copy_(self._bufs("prev"), list(self.backbone.parameters()))
            torch._foreach_copy_(self._bufs("anchor"), list(self.backbone.parameters()))

    def loss(self, batch):
        ce, parts = super().loss(batch)
        self._penalised = batch.task > 0  # Omega is zero before the first task ends
        if not self._penalised:
            return ce, parts
        diffs = torch._foreach_sub(list(self.backbone.parameters()), self._bufs("anchor"))
        penalty = sum((o * d * d).sum() for o, d in zip(self._bufs("omega"), diffs, strict=True))
        return ce + self.params.c * penalty, {**parts, "si": penalty.detach()}

    @torch.no_grad()
    def after_step(self) -> None:
        params = list(self.backbone.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        prev = self._bufs("prev")
        if self._penalised:
            # .grad holds the gradient of CE + c * sum Omega (theta - theta*)^2 at the weights the
            # step started from (prev). The penalty's own gradient there is known in closed form,
            # 2c * Omega * (prev - theta*), so the unregularised gradient is .grad minus it: no
            # second backward pass of CE alone.
            pen = torch._foreach_sub(prev, self._bufs("anchor"))
            torch._foreach_mul_(pen, self._bufs("omega"))
            grads = torch._foreach_add(grads, pen, alpha=-2.0 * self.params.c)
        step = torch._foreach_sub(params, prev)
        torch._foreach_mul_(step, grads)
        torch._foreach_sub_(self._bufs("path"), step)  # W -= g * delta
        torch._foreach_copy_(prev, params)

    def end_task(self, task, data, norm):
        super().end_task(task, data, norm)
        with torch.no_grad():
            params = list(self.backbone.parameters())
            for omega, w, p, a in zip(self._bufs("omega"), self._bufs("path"), params, self._bufs("anchor"), strict=True):
                den = (p - a).square_().add_(self.params.xi)
                omega.add_(torch.where(den > 0, w / den, 0.0))  # xi = 0: a parameter that never moved adds 0
            torch._foreach_copy_(self._bufs("anchor"), params)
