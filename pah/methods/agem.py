"""Averaged Gradient Episodic Memory (A-GEM, Chaudhry et al. 2019), multi-head task-incremental.

The episodic memory holds samples of the previous tasks only: at the end of each task its
training set is offered to a reservoir buffer of ``buffer_size`` samples (so the tasks seen
share it about equally). At every step of task t > 0, after the backward pass of the current
task's loss (gradient ``g``), one memory batch of ``replay_batch_size`` samples, each through
its own (old) task's head, gives the reference gradient ``g_ref``; if ``g . g_ref < 0``,

    g <- g - (g . g_ref / g_ref . g_ref) g_ref

and the optimizer steps with the projected ``g``. The vectors span every trainable parameter,
as in both reference implementations (Chaudhry et al.'s, van de Ven's): with one head per
task the dot product is over the shared backbone (the current head has no reference gradient,
the old heads no current one), and the projection also moves the old heads along ``-g_ref``.
The test ``g . g_ref < 0`` is a ``torch.where`` on the device, never a host sync, so the step
can be captured as a CUDA graph. The first task has no memory: its steps are plain finetuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pah.conf.agem import AGEMParams
from pah.methods.base import METHODS
from pah.methods.replay import ReplayMethod


def project(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> list[torch.Tensor]:
    """A-GEM's projection of the gradient ``grads`` against ``ref`` (lists of matching tensors)."""
    dot = sum((g * r).sum() for g, r in zip(grads, ref, strict=True))
    ref_sq = sum((r * r).sum() for r in ref)
    coef = torch.where(dot < 0, dot / ref_sq.clamp(min=1e-12), torch.zeros_like(dot))
    return torch._foreach_sub(grads, torch._foreach_mul(ref, coef))


@METHODS.register("agem")
class AGEM(ReplayMethod):
    Params = AGEMParams

    def after_backward(self, batch):
        if batch.task == 0:  # no memory yet
            return
        xb, yb, tb, _ = self.draw(batch)
        params = [p for p in self.parameters() if p.requires_grad]
        ref_loss = F.cross_entropy(self.own_head_logits(xb, tb, batch.task - 1), yb)
        ref = torch.autograd.grad(ref_loss, params, allow_unused=True)
        pairs = [(p, r) for p, r in zip(params, ref, strict=True) if r is not None]
        for p, _ in pairs:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        new = project([p.grad for p, _ in pairs], [r for _, r in pairs])
        torch._foreach_copy_([p.grad for p, _ in pairs], new)

    def end_task(self, task, data, norm):
        super().end_task(task, data, norm)
        self.fill_from_task(task, data)
