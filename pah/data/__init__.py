"""Continual-learning benchmarks, registered by name in :data:`BENCHMARKS`."""

from __future__ import annotations

from pah.data import cifar100, digits, mnist, synthetic, tiny_imagenet  # noqa: F401  (registration)
from pah.data.base import BENCHMARKS, Arrays, Benchmark, Shape, TaskData, build_tasks, normalizer
from pah.data.transforms import random_crop_flip, to_float

__all__ = [
    "BENCHMARKS",
    "Arrays",
    "Benchmark",
    "Shape",
    "TaskData",
    "build_tasks",
    "normalizer",
    "random_crop_flip",
    "to_float",
]
