"""Learning without Forgetting (Li & Hoiem 2017), multi-head.

Loss = CE on the current task + ``lambda_kd`` * tau^2 * KL(previous model || model)
on the logits of every old task's head, for the current batch. One teacher backbone
pass per batch, whatever the number of old tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pah.conf.lwf import LwFParams
from pah.data import TaskData, to_float
from pah.methods.base import METHODS, Batch, Method, kl_distill
from pah.methods.finetune import Finetune
from pah.models.heads import apply_heads


def cache_teacher(method, task: int, data: TaskData, norm, batch_size: int = 512) -> None:
    """Freeze what the teacher will say for the whole task: its old heads (one hypernetwork call)
    and, when the inputs are not augmented and its BatchNorm statistics are frozen (so what it
    says of an image does not depend on the rest of the batch), its old-task logits on every
    training image, so the training step needs no teacher pass at all."""
    teacher = method.teacher
    teacher.cached_old_heads = teacher.heads.heads(range(task))
    teacher.cached_logits = None
    if not method.shape.augment and not any(m.training for m in teacher._batchnorms()):
        W, b = teacher.cached_old_heads
        x = data.x_train
        teacher.cached_logits = torch.cat(
            [apply_heads(teacher.backbone(to_float(x[i : i + batch_size], *norm)), W, b) for i in range(0, len(x), batch_size)]
        )


def reduce_over_old_tasks(kl: torch.Tensor, old_tasks: int, reduction: str) -> torch.Tensor:
    """Mean of per-position KL values, times the number of old tasks for ``reduction="sum"``."""
    return kl.mean() * (old_tasks if reduction == "sum" else 1)


def old_task_distillation(method, batch: Batch, all_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL between the teacher's and the student's logits on the old tasks' heads, reduced over
    old tasks by ``method.params.kd_reduction``.

    At most one teacher backbone pass per batch (none when the teacher's logits are cached)."""
    teacher = method.teacher
    if teacher.cached_logits is not None and batch.index is not None:
        old_t = teacher.cached_logits[batch.index]
    else:
        with torch.no_grad():
            W, b = teacher.cached_old_heads
            old_t = apply_heads(teacher.backbone(batch.x), W, b)
    kl = kl_distill(all_logits[:, : batch.task], old_t, temperature)
    return reduce_over_old_tasks(kl, batch.task, method.params.kd_reduction)


class OldLogitDistillation(Method):
    """CE on the current task + ``lambda_kd`` * KL(teacher || student) on every old task's head."""

    uses_teacher = True

    def begin_task(self, task, data, norm):
        super().begin_task(task, data, norm)
        if self.teacher is not None:
            with torch.no_grad():  # the teacher is frozen: what it says is constant for the whole task
                cache_teacher(self, task, data, norm)

    def loss(self, batch):
        all_logits = self.all_logits(batch.x, batch.task)
        ce = F.cross_entropy(self.pick(all_logits, batch.task_ids).float(), batch.y)
        if self.teacher is None:
            return ce, {"ce": ce.detach()}
        kd = old_task_distillation(self, batch, all_logits, self.params.temperature)
        return ce + self.params.lambda_kd * kd, {"ce": ce.detach(), "kd": kd.detach()}


@METHODS.register("lwf")
class LwF(OldLogitDistillation, Finetune):
    Params = LwFParams
