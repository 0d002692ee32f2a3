"""Fine-tuning: a shared backbone and one head per task, trained on the current task only.

The lower bound: nothing fights forgetting.
"""

from __future__ import annotations

from pah.methods.base import METHODS, Method
from pah.models.heads import StaticHeads


@METHODS.register("finetune")
class Finetune(Method):
    def make_heads(self, dim):
        return StaticHeads(self.shape.num_tasks, self.shape.classes_per_task, dim)
