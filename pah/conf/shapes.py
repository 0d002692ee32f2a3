"""What each benchmark looks like, as data: tasks, classes per task, image size, channels,
mean/std. Sizes, crops and the number of tasks a sweep reports are computed from these, without
loading a dataset (or torch). The loaders in :mod:`pah.data` take their ``shape`` from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pah.registry import Registry

if TYPE_CHECKING:
    from pah.config import DataConfig

__all__ = ["Shape", "SHAPES", "resolved_shape"]


@dataclass(frozen=True)
class Shape:
    """What a benchmark looks like: everything sizes and crops are computed from."""

    num_tasks: int
    classes_per_task: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: default for data.augment: random crop (padding image_size // 8) + horizontal flip
    augment: bool = False

    @property
    def num_classes(self) -> int:
        return self.num_tasks * self.classes_per_task


#: dataset name -> its declared shape (``data.name`` is checked against these names)
SHAPES: Registry[Shape] = Registry("dataset")

_DECLARED = {
    "split-cifar100": Shape(
        num_tasks=10, classes_per_task=10, channels=3, image_size=32,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), augment=True,
    ),
    "split-digits": Shape(num_tasks=5, classes_per_task=2, channels=1, image_size=8, mean=(0.305,), std=(0.381,)),
    "split-fashion-mnist": Shape(
        num_tasks=5, classes_per_task=2, channels=1, image_size=28, mean=(0.2860,), std=(0.3530,)
    ),
    "split-mnist": Shape(num_tasks=5, classes_per_task=2, channels=1, image_size=28, mean=(0.1307,), std=(0.3081,)),
    "synthetic": Shape(
        num_tasks=5, classes_per_task=2, channels=3, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    ),
    "tiny-imagenet": Shape(
        num_tasks=10, classes_per_task=20, channels=3, image_size=64,
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821), augment=True,
    ),
}
for _name, _shape in _DECLARED.items():
    SHAPES.register(_name)(_shape)


def resolved_shape(cfg: DataConfig) -> Shape:
    """The shape a trial of ``cfg`` trains on: the declared one, with the config's overrides
    (task split, augmentation; for ``synthetic``, the copied ``shape_like`` and its image size and
    channels)."""
    s = SHAPES.get(cfg.name)
    if cfg.name == "synthetic":
        base = SHAPES.get(cfg.shape_like) if cfg.shape_like else s
        s = dataclasses.replace(base, channels=cfg.channels or base.channels, image_size=cfg.image_size or base.image_size)
        if len(s.mean) != s.channels:
            s = dataclasses.replace(s, mean=(0.5,) * s.channels, std=(0.25,) * s.channels)
    return with_overrides(s, cfg)


def with_overrides(s: Shape, cfg: DataConfig) -> Shape:
    """``s`` with the config's task-split and augmentation overrides."""
    if cfg.num_tasks is not None or cfg.classes_per_task is not None:
        s = dataclasses.replace(
            s,
            num_tasks=cfg.num_tasks or s.num_tasks,
            classes_per_task=cfg.classes_per_task or s.classes_per_task,
        )
    if cfg.augment is not None:
        s = dataclasses.replace(s, augment=cfg.augment)
    return s
