"""The training step of one task, run eagerly or captured once as a CUDA graph and replayed.

``TaskStep`` owns everything a task's steps share: the batch-index buffer, the learning-rate
warm-up and the non-finite bookkeeping (``first_bad``: the first step whose loss was not
finite, -1 if none; updated on the device, read by the caller every ``check_every`` steps).

With ``graph=True`` (``train.cuda_graph``, CUDA only) the first steps of a task run eagerly
on a side stream: the warm-up, whose learning rate changes every step, and at least
:data:`EAGER_MIN` steps so that cuDNN has picked its kernels and the optimizer has its
state. Then gather, normalisation, augmentation, forward, loss, backward, optimizer update
and the non-finite bookkeeping are captured as one graph, and every later step of the task
is one copy of the batch indices plus one replay: a few microseconds of CPU per step
instead of hundreds of kernel launches. The learning rate is constant after warm-up, so the
graph holds it as a plain number. Randomness inside the graph comes from a generator of its
own, registered with the graph, so the replayed steps draw fresh crops, flips and
prototype samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from pah.data import random_crop_flip, to_float
from pah.methods import Batch, Method

__all__ = ["TaskStep", "make_batch", "train_step", "warmup_factor", "EAGER_MIN"]

#: eager steps before a capture, at the least (cuDNN autotuning, optimizer state, lazy inits)
EAGER_MIN = 3


def make_batch(x_all, y_all, ids_all, idx, task: int, gen: torch.Generator, norm, augment: bool) -> Batch:
    """Gather, normalise and augment one batch on the device (no host round trip)."""
    raw = x_all[idx]
    x = to_float(raw, *norm)
    if augment:
        x = random_crop_flip(x, gen)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return Batch(x, y_all[idx], ids_all[idx], task, gen, None if augment else idx, raw)


def train_step(method: Method, optimizer: torch.optim.Optimizer, batch: Batch, autocast) -> torch.Tensor:
    """Forward, backward, update. Returns the loss as a device tensor (never synced here)."""
    with autocast():
        loss, _ = method.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with autocast():
        method.after_backward(batch)  # e.g. A-GEM's gradient projection
    optimizer.step()
    method.after_step()  # e.g. SI's path integral
    return loss.detach()


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up over the first ``warmup_steps`` steps of a task."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


class TaskStep:
    """``step(idx, i)``: train step ``i`` of the task on the samples ``idx``; returns the loss (a device tensor)."""

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        autocast: Callable[[], contextlib.AbstractContextManager],
        data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        task: int,
        gen: torch.Generator,
        norm: tuple[torch.Tensor, torch.Tensor],
        augment: bool,
        *,
        warmup: int = 0,
        graph: bool = False,
        graph_seed: int = 0,
    ) -> None:
        self.method, self.optimizer, self.autocast = method, optimizer, autocast
        self.data, self.task, self.gen, self.norm, self.augment = data, task, gen, norm, augment
        self.warmup = warmup
        dev = data[1].device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        self.counter = torch.zeros((), dtype=torch.long, device=dev)
        self._factor: float | None = None
        self.use_graph = graph and dev.type == "cuda"
        self.eager_steps = max(warmup, EAGER_MIN) if self.use_graph else None
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.use_graph:
            self._side = torch.cuda.Stream(dev)
            self._graph_gen = torch.Generator(device=dev).manual_seed(graph_seed)

    def _eager(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = make_batch(*self.data, idx, self.task, gen, self.norm, self.augment)
        loss = train_step(self.method, self.optimizer, batch, self.autocast)
        # in place: the same memory in every replay of a captured step
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(loss), self.counter, self.first_bad))
        self.counter += 1
        return loss

    def __call__(self, idx: torch.Tensor, i: int) -> torch.Tensor:
        if self.graph is not None:
            self._idx.copy_(idx)
            self.graph.replay()
            return self._loss
        factor = warmup_factor(i, self.warmup)
        if factor != self._factor:  # during the warm-up only: the rate is constant afterwards
            _set_lr(self.optimizer, factor)
            self._factor = factor
        if not self.use_graph:
            return self._eager(idx, self.gen)
        if i < self.eager_steps:
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                loss = self._eager(idx, self.gen)
            torch.cuda.current_stream().wait_stream(self._side)
            return loss
        self._capture(idx)
        return self(idx, i)

    def _capture(self, idx: torch.Tensor) -> None:
        self._idx = idx.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self._graph_gen)
        with torch.cuda.graph(graph):
            self._loss = self._eager(self._idx, self._graph_gen)
        self.graph = graph

    def close(self) -> None:
        """Release the graph and its memory pool (the next task captures its own)."""
        self.graph = None
        self._loss = None
