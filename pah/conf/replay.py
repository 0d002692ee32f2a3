"""What every replay method's hyperparameters share (the buffer: pah/methods/replay.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pah.conf.base import MethodParams, check

__all__ = ["ReplayParams"]


@dataclass(frozen=True)
class ReplayParams(MethodParams):
    """What every replay method shares: the buffer size and the replay batch size."""

    name: str = "er"
    #: samples kept in the buffer, over all tasks
    buffer_size: int = 200
    #: samples drawn from the buffer per step; None: the training batch size
    replay_batch_size: int | None = None

    def __post_init__(self) -> None:
        check(self.buffer_size >= 1, "method.buffer_size", self.buffer_size, ">= 1")
        check(self.buffer_size <= 2**24, "method.buffer_size", self.buffer_size, "<= 16777216")
        rb = self.replay_batch_size
        check(rb is None or 1 <= rb <= 2**20, "method.replay_batch_size", rb, "1 to 1048576, or null")

