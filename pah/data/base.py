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

from pah.conf.shapes import Shape, resolved_shape
from pah.errors import UserError
from pah.registry import Registry

if TYPE_CHECKING:  # torch is imported where tensors are made (build_tasks, normalizer), not here:
    import torch  # a sweep driver reads labels (check_task_sizes) without it

    from pah.config import Config, DataConfig

__all__ = ["Shape", "Arrays", "Benchmark", "TaskData", "BENCHMARKS", "build_tasks", "data_roots", "normalizer",
           "decoded", "cache_root", "check_task_sizes", "split_tasks"]


@dataclass
class Arrays:
    """A whole dataset in memory, as read from disk."""

    x_train: np.ndarray  # uint8, N x C x H x W
    y_train: np.ndarray  # int64, N
    x_test: np.ndarray
    y_test: np.ndarray


class Benchmark:
    """Base class: subclasses set ``name``, ``shape`` (declared under that name in pah.conf.shapes:
    ``SHAPES.get(name)``) and implement :meth:`load`."""

    name: str
    shape: Shape
    #: how to get the data, shown when it is missing
    how_to_get: str = ""

    def resolved_shape(self, cfg: DataConfig) -> Shape:
        """The declared shape with the config's overrides (pah.conf.shapes.resolved_shape)."""
        return resolved_shape(cfg if cfg.name == self.name else dataclasses.replace(cfg, name=self.name))

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


@dataclass
class TaskSplit:
    """Which images one task takes, as indices into the dataset's arrays (no images, no torch)."""

    classes: np.ndarray  # original labels, in head order
    remap: np.ndarray  # original label -> label within the task (-1: another task's)
    train: np.ndarray
    val: np.ndarray
    proto: np.ndarray
    test: np.ndarray


def split_tasks(y_train: np.ndarray, y_test: np.ndarray, shape: Shape, cfg: DataConfig, seed: int) -> list[TaskSplit]:
    """Split a dataset's labels into ``shape.num_tasks`` tasks: the classes of each, and its
    seeded train/validation/prototype split. :func:`build_tasks` takes the images from these."""
    all_classes = np.unique(y_train)
    needed = shape.num_classes
    if len(all_classes) < needed:
        raise UserError(
            f"data: {shape.num_tasks} tasks x {shape.classes_per_task} classes needs {needed} classes, "
            f"the dataset has {len(all_classes)}"
        )
    order = all_classes if cfg.class_order == "fixed" else np.random.default_rng(seed).permutation(all_classes)
    rng = np.random.default_rng([seed, 1])  # validation split and prototype images
    splits = []
    for t in range(shape.num_tasks):
        classes = order[t * shape.classes_per_task : (t + 1) * shape.classes_per_task]
        remap = np.full(int(max(all_classes.max(), y_test.max())) + 1, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        tr, va, pr = _split_task(y_train, classes, cfg.val_fraction, rng, cfg.train_per_class)
        te = np.flatnonzero(np.isin(y_test, classes))
        splits.append(TaskSplit(classes, remap, tr, va, pr, te))
    return splits


def build_tasks(arrays: Arrays, shape: Shape, cfg: DataConfig, seed: int, device: torch.device) -> list[TaskData]:
    """Split a dataset into ``shape.num_tasks`` tasks and move them to ``device`` as uint8."""
    import torch

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    tasks = []
    for t, s in enumerate(split_tasks(arrays.y_train, arrays.y_test, shape, cfg, seed)):
        tasks.append(
            TaskData(
                task=t,
                classes=[int(c) for c in s.classes],
                x_train=put(arrays.x_train[s.train]),
                y_train=put(s.remap[arrays.y_train[s.train]]),
                x_val=put(arrays.x_train[s.val]),
                y_val=put(s.remap[arrays.y_train[s.val]]),
                x_test=put(arrays.x_test[s.test]),
                y_test=put(s.remap[arrays.y_test[s.test]]),
                x_proto=put(arrays.x_train[s.proto]),
            )
        )
    return tasks


def check_task_sizes(cfg: Config, sizes: list[int] | None = None, *, missing_ok: bool = False) -> list[int]:
    """Every task keeps at least one training image once ``data.val_fraction`` has taken its share
    (a trial trains full batches of ``min(batch_size, images)``: a task without images has no batch).

    ``sizes``: the tasks' training set sizes, if the caller split the data already; else the
    dataset's labels are read and split as the trial will (no images, no torch). ``missing_ok``: a
    dataset this machine does not have is not checked (a sweep driver on a cluster's head). Returns
    the sizes; a task without a training image is a UserError naming ``data.val_fraction``.
    """
    if sizes is None:
        try:
            arrays = BENCHMARKS.get(cfg.data.name)().load(cfg.data, cfg.seed)
        except UserError:
            if missing_ok:
                return []
            raise
        splits = split_tasks(arrays.y_train, arrays.y_test, resolved_shape(cfg.data), cfg.data, cfg.seed)
        sizes = [len(s.train) for s in splits]
    empty = [t for t, n in enumerate(sizes) if n == 0]
    if empty:
        raise UserError(
            f"data.val_fraction: {cfg.data.val_fraction!r} leaves {len(empty)} of {len(sizes)} task(s) of "
            f"{cfg.data.name} without a training image (task {empty[0] + 1} first); use a smaller value")
    return sizes


# --------------------------------------------------------------------------- on-device transforms


def normalizer(shape: Shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as 1 x C x 1 x 1 tensors on ``device``, in the 0..1 pixel scale."""
    import torch

    mean = torch.tensor(shape.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(shape.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std
