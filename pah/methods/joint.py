"""Joint (multitask) training: at task t, train on the data of tasks 0..t together.

The upper bound of the sequence. Each sample is classified by its own task's head;
a step costs the same at every task (the batch size is fixed), only epochs get longer.

BatchNorm (``train.batchnorm: task``): the weights after task t were trained on the mixture of
tasks 0..t, so every task seen is tested with the running statistics of that mixture, not with
the ones recorded when it alone had been learned. With those, on Split-Fashion-MNIST with a
ResNet-18, joint training scored below EWC and PAH and "forgot" 1.6 % (3 seeds) (bench/RESULTS.md).
"""

from __future__ import annotations

import torch

from pah.data import TaskData
from pah.methods.base import METHODS
from pah.methods.finetune import Finetune


@METHODS.register("joint")
class Joint(Finetune):
    def train_data(self, task: int, tasks: list[TaskData]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen = tasks[: task + 1]
        x = torch.cat([d.x_train for d in seen])
        y = torch.cat([d.y_train for d in seen])
        ids = torch.cat([torch.full_like(d.y_train, d.task) for d in seen])
        return x, y, ids

    def keep_bn_stats(self, task: int) -> None:
        """The statistics now in the backbone (of tasks 0..task mixed) become every seen task's."""
        for t in range(task + 1):
            super().keep_bn_stats(t)
