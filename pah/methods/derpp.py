"""Dark Experience Replay++ (DER++, Buzzega et al. 2020), multi-head task-incremental.

A reservoir buffer over the stream (see :mod:`pah.methods.replay`) keeps, with each sample,
the logits the model gave it when it was inserted. The loss of a step is

    CE(current batch) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

with (x', z') and (x'', y'') two independent draws of ``replay_batch_size`` samples from the
buffer, and MSE the mean over samples and classes, as in the paper.

Multi-head: the stored logits ``z`` of a sample are the K logits of *its own task's head*
(the head that classified it when it was inserted, from the same forward pass as the training
loss, on the augmented image when the benchmark augments). At replay, ``f(x')`` is likewise
that sample's logits under its own task's head, so each stored vector is compared with the
output of the same head it came from. The current batch and both draws go through the
backbone together, in one pass (BatchNorm sees them as one batch; the paper's code uses three
passes), and the current batch enters the buffer after the draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pah.conf.derpp import DERppParams
from pah.methods.base import METHODS
from pah.methods.replay import ReplayMethod


def derpp_loss(
    cur: torch.Tensor, y: torch.Tensor, first: torch.Tensor, z: torch.Tensor, second: torch.Tensor, y2: torch.Tensor,
    alpha: float, beta: float, weight: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DER++'s loss from own-head logits: current batch, first draw (against stored ``z``), second draw."""
    ce = F.cross_entropy(cur, y)
    mse = F.mse_loss(first, z) * weight
    ce2 = F.cross_entropy(second, y2) * weight
    return ce + alpha * mse + beta * ce2, {"ce": ce.detach(), "mse": mse.detach(), "replay_ce": ce2.detach()}


@METHODS.register("derpp")
class DERpp(ReplayMethod):
    Params = DERppParams
    keeps_logits = True

    def loss(self, batch):
        B = batch.y.shape[0]
        x1, _, t1, i1 = self.draw(batch)
        x2, y2, t2, _ = self.draw(batch)
        R = x1.shape[0]
        logits = self.own_head_logits(torch.cat([batch.x, x1, x2]), torch.cat([batch.task_ids, t1, t2]), batch.task)
        cur, first, second = logits[:B], logits[B : B + R], logits[B + R :]
        loss, parts = derpp_loss(cur, batch.y, first, self.buffer.logits[i1], second, y2,
                                 self.params.alpha, self.params.beta, self.not_empty())
        self.insert(batch, cur)
        return loss, parts
