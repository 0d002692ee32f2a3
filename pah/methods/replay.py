"""A reservoir replay buffer on the device, shared by the replay baselines (ER, A-GEM, DER++).

Every field is a registered buffer, so the buffer is part of ``state_dict()`` and of every task
checkpoint: a killed and resumed trial replays exactly what the uninterrupted one did.

Insertion is reservoir sampling (Vitter's algorithm R) over the stream of training samples,
vectorised over a batch with no Python loop per sample and no host sync: the ``n``-th sample
of the stream (0-based) takes slot ``n`` while the buffer is not full, and afterwards replaces a
uniformly drawn slot ``r`` in ``[0, n]`` when ``r < size``. Within one batch, two samples that
draw the same slot are resolved as the sequential algorithm would: the later one wins. Every
sample then writes the winner's values to its slot, so the duplicated writes of one step are
identical and the result does not depend on the order in which the device performs them.

Images are kept as the uint8 tensors of :class:`~pah.data.TaskData` (normalised, and augmented
when the benchmark augments, each time they are replayed), with their labels within their
task, their task ids, and optionally the logits of their own task's head at insertion (DER++).
"""

from __future__ import annotations

import torch
from torch import nn

from pah.conf.replay import ReplayParams
from pah.data import Shape, random_crop_flip, to_float
from pah.methods.base import Batch
from pah.methods.finetune import Finetune

__all__ = ["ReplayBuffer", "ReplayParams", "ReplayMethod"]


class ReplayBuffer(nn.Module):
    """``size`` samples of the stream, uniformly drawn (reservoir), on the device of its buffers."""

    def __init__(self, size: int, shape: Shape, *, logits: int = 0) -> None:
        super().__init__()
        self.size = size
        c, s = shape.channels, shape.image_size
        self.register_buffer("x", torch.zeros(size, c, s, s, dtype=torch.uint8))
        self.register_buffer("y", torch.zeros(size, dtype=torch.long))
        self.register_buffer("task", torch.zeros(size, dtype=torch.long))
        #: DER++: the logits of each sample's own task head when it was inserted (size x K)
        self.register_buffer("logits", torch.zeros(size, logits) if logits else None)
        #: samples of the stream offered to the buffer so far (a 0-d long tensor: no host sync)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def filled(self) -> torch.Tensor:
        """How many slots hold a sample (a 0-d device tensor)."""
        return self.seen.clamp(max=self.size)

    @torch.no_grad()
    def add(
        self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, generator: torch.Generator,
        logits: torch.Tensor | None = None,
    ) -> None:
        """Offer a batch of the stream (uint8 images, labels, task ids[, logits]) to the reservoir."""
        n = y.shape[0]
        dev = self.seen.device
        order = torch.arange(n, device=dev)
        pos = self.seen + order  # each sample's place in the stream
        draw = (torch.rand(n, device=dev, generator=generator, dtype=torch.float64) * (pos + 1)).long()
        slot = torch.where(pos < self.size, pos, torch.minimum(draw, pos))
        accept = slot < self.size
        slot = torch.where(accept, slot, torch.zeros_like(slot))
        # per slot, the last accepted sample of the batch that drew it (-1: none)
        winner = torch.full((self.size,), -1, dtype=torch.long, device=dev)
        winner.scatter_reduce_(0, slot, torch.where(accept, order, -1), "amax")
        w = winner[slot]
        keep = w < 0  # a rejected sample parked on a slot nobody in this batch won: rewrite its old value
        src = w.clamp(min=0)
        fields = [(self.x, x), (self.y, y), (self.task, task)]
        if self.logits is not None:
            if logits is None:
                raise ValueError("this buffer keeps logits: add() needs them")
            fields.append((self.logits, logits))
        for buf, new in fields:
            k = keep.view(-1, *([1] * (buf.dim() - 1)))
            buf[slot] = torch.where(k, buf[slot], new[src].to(buf.dtype))
        self.seen += n

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` slot indices drawn uniformly, with replacement, from the filled part (all 0 while empty)."""
        r = torch.rand(n, device=self.seen.device, generator=generator)
        return (r * self.filled()).long().clamp(max=self.size - 1)

    def images(
        self, idx: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor], augment: bool, generator: torch.Generator
    ) -> torch.Tensor:
        """The samples ``idx`` as a training batch: normalised, and augmented like the stream."""
        x = to_float(self.x[idx], *norm)
        if augment:
            x = random_crop_flip(x, generator)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class ReplayMethod(Finetune):
    """Multi-head finetuning with a reservoir buffer (``self.buffer``); subclasses define the loss.

    A replayed sample is classified by its own task's head: one backbone pass over the current
    and the replayed samples together, then each sample's logits under its own head
    (:meth:`~pah.methods.base.Method.all_logits` and ``pick``). The work per step is one
    backbone pass over a fixed number of samples, whatever the number of tasks (the heads
    are a few small matrix products).
    """

    Params = ReplayParams
    #: DER++ keeps each sample's logits with it
    keeps_logits = False

    def __init__(self, params, shape, backbone):
        super().__init__(params, shape, backbone)
        self.buffer = ReplayBuffer(params.buffer_size, shape, logits=shape.classes_per_task if self.keeps_logits else 0)
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def begin_task(self, task, data, norm):
        super().begin_task(task, data, norm)
        self._norm = norm

    def replay_size(self, batch: Batch) -> int:
        return self.params.replay_batch_size or batch.y.shape[0]

    def draw(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One replay batch from the buffer: (images as a training batch, labels, task ids, slots)."""
        idx = self.buffer.sample(self.replay_size(batch), batch.generator)
        x = self.buffer.images(idx, self._norm, self.shape.augment, batch.generator)
        return x, self.buffer.y[idx], self.buffer.task[idx], idx

    def own_head_logits(self, x: torch.Tensor, task_ids: torch.Tensor, upto: int) -> torch.Tensor:
        """Each sample's logits under its own task's head, from one backbone pass (N x K, float)."""
        return self.pick(self.all_logits(x, upto), task_ids).float()

    def not_empty(self) -> torch.Tensor:
        """1.0 once the buffer holds a sample, else 0.0 (a device tensor: weights the replay loss)."""
        return (self.buffer.seen > 0).float()

    def insert(self, batch: Batch, logits: torch.Tensor | None = None) -> None:
        """Offer the current batch to the reservoir (its uint8 images, as TaskData stores them)."""
        if batch.raw is None:
            raise ValueError("replay methods need Batch.raw, the batch's uint8 images (pah.step.make_batch sets it)")
        self.buffer.add(batch.raw, batch.y, batch.task_ids, batch.generator,
                        None if logits is None else logits.detach().float())

    @torch.no_grad()
    def fill_from_task(self, task: int, data, chunk: int = 1024) -> None:
        """Offer a whole task's training set to the reservoir, in chunks (at the end of the task)."""
        dev = data.y_train.device
        # seeded from the global generator, which the trial seeds at the start of every task
        gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,))))
        for i in range(0, len(data.y_train), chunk):
            y = data.y_train[i : i + chunk]
            self.buffer.add(data.x_train[i : i + chunk], y, torch.full_like(y, task), gen)
