"""Benchmarks declare their shape as data; one generic routine turns arrays into tasks.

A benchmark module only knows how to find and read its files into uint8 arrays
(``N x C x H x W``) with integer labels. Splitting into tasks, the seeded validation
split, the held-out prototype image per class, and moving everything to the training
device are done here, once, for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pah.errors import UserError
from pah.registry import Registry

if TYPE_CHECKING:
    from pah.config import DataConfig

__all__ = ["Shape", "Arrays", "Benchmark", "TaskData", "BENCHMARKS", "build_tasks", "data_roots", "normalizer",
           "decoded", "cache_root"]


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


@dataclass
class Arrays:
    """A whole dataset in memory, as read from disk."""

    x_train: np.ndarray  # uint8, N x C x H x W
    y_train: np.ndarray  # int64, N
    x_test: np.ndarray
    y_test: np.ndarray


class Benchmark:
    """Base class: subclasses set ``name``, ``shape`` and implement :meth:`load`."""

    name: str
    shape: Shape
    #: how to get the data, shown when it is missing
    how_to_get: str = ""

    def resolved_shape(self, cfg: DataConfig) -> Shape:
        """The declared shape with the config's task-split and augmentation overrides."""
        return self.resolved_shape_from(self.shape, cfg)

    @staticmethod
    def resolved_shape_from(s: Shape, cfg: DataConfig) -> Shape:
        if cfg.num_tasks is not None or cfg.classes_per_task is not None:
            s = dataclasses.replace(
                s,
                num_tasks=cfg.num_tasks or s.num_tasks,
                classes_per_task=cfg.classes_per_task or s.classes_per_task,
            )
        if cfg.augment is not None:
            s = dataclasses.replace(s, augment=cfg.augment)
        return s

    def load(self, cfg: DataConfig, seed: int) -> Arrays:
        raise NotImplementedError

    def missing(self, looked: list[Path]) -> UserError:
        where = ", ".join(str(p) for p in looked) or "(nowhere)"
        return UserError(f"dataset {self.name!r} not found; looked in {where}. {self.how_to_get}")


BENCHMARKS: Registry[type[Benchmark]] = Registry("dataset")


def data_roots(cfg: DataConfig, *extra: str | Path) -> list[Path]:
    """Where to look for a dataset: data.root, $PAH_DATA_DIR, ~/.cache/pah/data, then ``extra``."""
    roots: list[Path] = []
    if cfg.root:
        roots.append(Path(cfg.root).expanduser())
    if os.environ.get("PAH_DATA_DIR"):
        roots.append(Path(os.environ["PAH_DATA_DIR"]).expanduser())
    roots.append(Path("~/.cache/pah/data").expanduser())
    roots.extend(Path(p) for p in extra)
    return roots


# --------------------------------------------------------------------------- decoded-array cache

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_root() -> Path | None:
    """Where decoded datasets are kept: $PAH_CACHE_DIR (empty or ``off``: no cache), else ~/.cache/pah/decoded."""
    env = os.environ.get("PAH_CACHE_DIR")
    if env is not None:
        return None if env.strip() in ("", "off") else Path(env).expanduser()
    return Path("~/.cache/pah/decoded").expanduser()


def decoded(name: str, sources: Sequence[Path], decode: Callable[[], Arrays]) -> Arrays:
    """``decode()``'s arrays, decoded once per machine and then memory-mapped from the cache.

    The cache entry is keyed by the sources' paths, sizes and modification times, so a
    changed file is decoded again. Uncompressed ``.npy`` files: a trial's start reads only
    the pages it indexes (no gzip, no pickle, no JPEG). A cache that cannot be written
    (read-only home, disk full) is skipped: the arrays are decoded every time instead.
    """
    root = cache_root()
    if root is None:
        return decode()
    h = hashlib.sha256(name.encode())
    for src in sources:
        st = src.stat()
        h.update(f"\0{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    entry = root / f"{name}-{h.hexdigest()[:16]}"
    if (entry / "complete").exists():
        try:
            return Arrays(*(np.load(entry / f"{k}.npy", mmap_mode="r") for k in _ARRAYS))
        except (OSError, ValueError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: decode again below
    arrays = decode()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(getattr(arrays, k)))
        (tmp / "complete").touch()
        try:
            tmp.rename(entry)  # atomic: a concurrent trial that got there first wins, ours is dropped
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
    return arrays


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskData:
    """One task's data on the training device; labels remapped to 0..classes_per_task-1."""

    task: int
    classes: list[int]  # original labels, in head order
    x_train: torch.Tensor  # uint8 N x C x H x W
    y_train: torch.Tensor  # int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: one held-out training image per class, for prototype initialisation (K x C x H x W, uint8)
    x_proto: torch.Tensor


def _split_task(
    x: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator,
    train_per_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, proto) for one task: a per-class seeded split; at most
    ``train_per_class`` training images per class (a seeded subset, for fast screening)."""
    train, val, proto = [], [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2:
            raise UserError(f"dataset has {len(idx)} training image(s) of class {c}; need at least 2")
        proto.append(idx[0])
        rest = idx[1:]
        n_val = int(round(len(rest) * val_fraction))
        val.append(rest[:n_val])
        train.append(rest[n_val:][:train_per_class])
    return np.concatenate(train), np.concatenate(val), np.asarray(proto)


def build_tasks(arrays: Arrays, shape: Shape, cfg: DataConfig, seed: int, device: torch.device) -> list[TaskData]:
    """Split a dataset into ``shape.num_tasks`` tasks and move them to ``device`` as uint8."""
    all_classes = np.unique(arrays.y_train)
    needed = shape.num_classes
    if len(all_classes) < needed:
        raise UserError(
            f"data: {shape.num_tasks} tasks x {shape.classes_per_task} classes needs {needed} classes, "
            f"the dataset has {len(all_classes)}"
        )
    order = all_classes if cfg.class_order == "fixed" else np.random.default_rng(seed).permutation(all_classes)
    rng = np.random.default_rng([seed, 1])  # validation split and prototype images
    tasks = []
    for t in range(shape.num_tasks):
        classes = order[t * shape.classes_per_task : (t + 1) * shape.classes_per_task]
        remap = np.full(int(max(all_classes.max(), arrays.y_test.max())) + 1, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        tr, va, pr = _split_task(arrays.x_train, arrays.y_train, classes, cfg.val_fraction, rng, cfg.train_per_class)
        te = np.flatnonzero(np.isin(arrays.y_test, classes))

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        tasks.append(
            TaskData(
                task=t,
                classes=[int(c) for c in classes],
                x_train=put(arrays.x_train[tr]),
                y_train=put(remap[arrays.y_train[tr]]),
                x_val=put(arrays.x_train[va]),
                y_val=put(remap[arrays.y_train[va]]),
                x_test=put(arrays.x_test[te]),
                y_test=put(remap[arrays.y_test[te]]),
                x_proto=put(arrays.x_train[pr]),
            )
        )
    return tasks


# --------------------------------------------------------------------------- on-device transforms


def normalizer(shape: Shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as 1 x C x 1 x 1 tensors on ``device``, in the 0..1 pixel scale."""
    mean = torch.tensor(shape.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(shape.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std
