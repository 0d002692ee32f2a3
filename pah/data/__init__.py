"""Continual-learning benchmarks, registered by name in :data:`BENCHMARKS`.

Importing this package does not import torch: the loaders and the label split are numpy, so a
sweep driver can check a config against the data (``check_task_sizes``) without it. The on-device
transforms (``to_float``, ``random_crop_flip``) are torch, and load on first use.
"""

from __future__ import annotations

from typing import Any

from pah.data import cifar100, digits, mnist, synthetic, tiny_imagenet  # noqa: F401  (registration)
from pah.data.base import (
    BENCHMARKS,
    Arrays,
    Benchmark,
    Shape,
    TaskData,
    build_tasks,
    check_task_sizes,
    normalizer,
    split_tasks,
)

__all__ = [
    "BENCHMARKS",
    "Arrays",
    "Benchmark",
    "Shape",
    "TaskData",
    "build_tasks",
    "check_task_sizes",
    "normalizer",
    "split_tasks",
    "random_crop_flip",
    "to_float",
]


def __getattr__(name: str) -> Any:
    if name in ("random_crop_flip", "to_float"):  # torch: imported by the trials that use them
        from pah.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'pah.data' has no attribute {name!r}")
