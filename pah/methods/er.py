"""Experience replay (ER), multi-head task-incremental.

A reservoir buffer of ``buffer_size`` samples (see :mod:`pah.methods.replay`). Each step:
cross-entropy on the current batch plus cross-entropy on a replay batch of
``replay_batch_size`` samples (default: the training batch size) drawn from the buffer,
each sample through its own task's head; one backbone pass over both.

``fill: stream`` (the default, as in Mammoth's ER and DER): the buffer is a reservoir over
every training sample seen, current task included, filled as the batches go by.
``fill: task_end``: the buffer takes its samples at the end of each task (a reservoir over that
task's training set), so it replays the previous tasks only, as van de Ven's ER does.
``weighting: sum``: CE_current + CE_replay. ``weighting: per-task``: at task t (0-based),
CE_current / (t+1) + CE_replay * t / (t+1), every task seen so far weighted alike (van de Ven's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pah.conf.er import ERParams
from pah.methods.base import METHODS
from pah.methods.replay import ReplayMethod


@METHODS.register("er")
class ER(ReplayMethod):
    Params = ERParams

    def loss(self, batch):
        B = batch.y.shape[0]
        xb, yb, tb, _ = self.draw(batch)
        logits = self.own_head_logits(torch.cat([batch.x, xb]), torch.cat([batch.task_ids, tb]), batch.task)
        ce = F.cross_entropy(logits[:B], batch.y)
        replay = F.cross_entropy(logits[B:], yb) * self.not_empty()
        if self.params.fill == "stream":
            self.insert(batch)
        if self.params.weighting == "per-task":
            t = batch.task
            loss = ce / (t + 1) + replay * t / (t + 1)
        else:
            loss = ce + replay
        return loss, {"ce": ce.detach(), "replay": replay.detach()}

    def end_task(self, task, data, norm):
        super().end_task(task, data, norm)
        if self.params.fill == "task_end":
            self.fill_from_task(task, data)
