"""What every continual-learning method shares, and the hooks a method overrides.

A method is an ``nn.Module`` holding the shared backbone and the task heads. The trial
loop calls, per task: :meth:`begin_task`, then :meth:`loss` once per batch, then
:meth:`end_task`; evaluation calls :meth:`logits`. :meth:`after_step` runs after every
optimizer update. Methods that distil from the
previous model get a frozen copy of it (``self.teacher``) at the start of each task
after the first. The teacher is never saved: it is exactly the model of the last
checkpoint, so resuming rebuilds it.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pah.conf import MethodParams, Shape
from pah.config import TrainConfig
from pah.data import TaskData
from pah.models.heads import TaskHeads, apply_heads
from pah.registry import Registry

__all__ = ["Method", "METHODS", "Batch", "kl_distill"]


@dataclass
class Batch:
    x: torch.Tensor  # normalised float, B x C x H x W
    y: torch.Tensor  # labels within each sample's task
    task_ids: torch.Tensor  # the task of each sample (all equal, except for joint training)
    task: int  # the task being learned
    generator: torch.Generator
    #: positions of the samples in the task's training data (lets a method use per-sample caches)
    index: torch.Tensor | None = None
    #: the batch's uint8 images as stored in TaskData, before normalisation and augmentation
    #: (what a replay buffer keeps)
    raw: torch.Tensor | None = None


def kl_distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), one value per leading position."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


class Method(nn.Module):
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: keep a frozen copy of the model from the end of the previous task
    uses_teacher: ClassVar[bool] = False

    def __init__(self, params: MethodParams, shape: Shape, backbone: nn.Module) -> None:
        super().__init__()
        self.params = params
        self.shape = shape
        self.backbone = backbone
        self.heads: TaskHeads = self.make_heads(backbone.out_dim)
        self.teacher: Method | None = None
        #: BatchNorm keeps its running statistics while training (``train.batchnorm: freeze``, tasks 2+)
        self.bn_frozen = False
        # each task's BatchNorm statistics as they were when it ended (``train.batchnorm: task``);
        # a buffer, so checkpoints keep them
        n = sum(m.running_mean.numel() for m in self._batchnorms())
        self.register_buffer("task_bn_stats", torch.zeros(shape.num_tasks, 2 * n))

    # ------------------------------------------------------------------ structure
    def make_heads(self, dim: int) -> TaskHeads:
        raise NotImplementedError

    def param_groups(self, train: TrainConfig) -> list[dict]:
        """Backbone at ``train.lr``; everything task-specific (heads, hypernetwork, prototypes) at ``train.head_lr``."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [
            {"params": backbone, "lr": train.lr, "weight_decay": train.weight_decay},
            {"params": rest, "lr": train.head_lr, "weight_decay": train.weight_decay},
        ]

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if mode and self.bn_frozen:
            for m in self._batchnorms():
                m.eval()
        return self

    # ------------------------------------------------------------------ per-task BatchNorm statistics
    def _batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    def _bn_stats(self) -> list[torch.Tensor]:
        return [t for m in self._batchnorms() for t in (m.running_mean, m.running_var)]

    def keep_bn_stats(self, task: int) -> None:
        """Record the running statistics now in the backbone as ``task``'s."""
        if self.task_bn_stats.numel():
            self.task_bn_stats[task].copy_(torch.cat(self._bn_stats()))

    @contextlib.contextmanager
    def bn_stats_of(self, task: int):
        """Inside: the backbone normalises with ``task``'s recorded statistics; restored on exit."""
        live = self._bn_stats()
        saved = torch.cat(live) if live else None
        if live:
            torch._foreach_copy_(live, list(self.task_bn_stats[task].split([t.numel() for t in live])))
        try:
            yield
        finally:
            if live:
                torch._foreach_copy_(live, list(saved.split([t.numel() for t in live])))

    # ------------------------------------------------------------------ forward
    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Task-incremental prediction: the logits of ``task``'s head (B x K)."""
        W, b = self.heads.heads([task])
        return apply_heads(self.backbone(x), W, b)[:, 0]

    def all_logits(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Logits under the heads of tasks 0..upto, from one backbone pass: B x (upto+1) x K."""
        W, b = self.heads.heads(range(upto + 1))
        return apply_heads(self.backbone(x), W, b)

    @staticmethod
    def pick(all_logits: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Each sample's logits under its own task's head."""
        return all_logits[torch.arange(all_logits.shape[0], device=all_logits.device), task_ids]

    # ------------------------------------------------------------------ hooks
    def train_data(self, task: int, tasks: list[TaskData]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What task ``task`` trains on: (uint8 images, labels, task ids). Joint training widens it."""
        d = tasks[task]
        return d.x_train, d.y_train, torch.full_like(d.y_train, task)

    def begin_task(self, task: int, data: TaskData, norm: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.uses_teacher and task > 0:
            self.teacher = self.frozen_copy()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one batch and its named parts (tensors: no host sync)."""
        logits = self.pick(self.all_logits(batch.x, batch.task), batch.task_ids)
        ce = F.cross_entropy(logits.float(), batch.y)
        return ce, {"ce": ce.detach()}

    def after_backward(self, batch: Batch) -> None:
        """Called between ``loss.backward()`` and the optimizer step: a method may rewrite the
        gradients here (A-GEM projects them). Device work only: no host sync."""

    def after_step(self) -> None:
        """Called after every optimizer update, with the step's gradients still in ``.grad``.
        Device work only (no host sync): it is part of the step a CUDA graph captures."""

    def end_task(self, task: int, data: TaskData, norm: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.teacher = None

    def frozen_copy(self) -> Method:
        prev, self.teacher = self.teacher, None
        teacher = copy.deepcopy(self)
        self.teacher = prev
        # the teacher normalises as the student does while training: with running statistics
        # when they are frozen, with batch statistics otherwise (so the distilled function and
        # the student's are the same function of the batch)
        teacher.train(self.training)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def __setattr__(self, name, value):
        if name == "teacher":  # not a submodule: excluded from state_dict, parameters() and .to()
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


METHODS: Registry[type[Method]] = Registry("method")
