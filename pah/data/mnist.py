"""Split-MNIST and Split-Fashion-MNIST (5 tasks x 2 classes) from the IDX files.

Looks in data.root, $PAH_DATA_DIR, ~/.cache/pah/data (each with or without a
``fashion-mnist/``, ``FashionMNIST/raw`` or ``MNIST/raw`` folder), and for Fashion-MNIST
where Debian's ``dataset-fashion-mnist`` package installs it. With data.download=true,
torchvision downloads the files when they are missing.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pah.conf.shapes import SHAPES
from pah.data.base import BENCHMARKS, Arrays, Benchmark, data_roots, decoded
from pah.errors import UserError

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(raw[2])
    if dtype is None:
        raise UserError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


class _IdxBenchmark(Benchmark):
    subdirs: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    torchvision_class: str

    def _find(self, cfg) -> tuple[Path | None, list[Path]]:
        looked = []
        for root in data_roots(cfg, *self.system_dirs):
            for sub in ("", *self.subdirs):
                d = root / sub if sub else root
                looked.append(d)
                if all((d / n).exists() or (d / (n + ".gz")).exists() for n in FILES.values()):
                    return d, looked
        return None, looked

    def load(self, cfg, seed):
        d, looked = self._find(cfg)
        if d is None and cfg.download:
            import torchvision

            root = data_roots(cfg)[0]
            getattr(torchvision.datasets, self.torchvision_class)(str(root), train=True, download=True)
            getattr(torchvision.datasets, self.torchvision_class)(str(root), train=False, download=True)
            d, looked = self._find(cfg)
        if d is None:
            raise self.missing(looked)
        paths = {key: d / n if (d / n).exists() else d / (n + ".gz") for key, n in FILES.items()}

        def decode() -> Arrays:
            arr = {key: read_idx(p) for key, p in paths.items()}
            # reshape, not [:, None]: a channel axis with stride 0 would reach torch as such, and its
            # kernels take another path (same images, other rounding) than for the cached arrays
            x_train, x_test = (a.reshape(len(a), 1, *a.shape[1:]) for a in (arr["x_train"], arr["x_test"]))
            return Arrays(x_train, arr["y_train"].astype(np.int64), x_test, arr["y_test"].astype(np.int64))

        return decoded(self.name, list(paths.values()), decode)


@BENCHMARKS.register("split-mnist")
class SplitMNIST(_IdxBenchmark):
    name = "split-mnist"
    shape = SHAPES.get(name)
    subdirs = ("mnist", "MNIST/raw")
    torchvision_class = "MNIST"
    how_to_get = "Put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) there, set PAH_DATA_DIR, or add --set data.download=true (needs network)."


@BENCHMARKS.register("split-fashion-mnist")
class SplitFashionMNIST(_IdxBenchmark):
    name = "split-fashion-mnist"
    shape = SHAPES.get(name)
    subdirs = ("fashion-mnist", "FashionMNIST/raw")
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    torchvision_class = "FashionMNIST"
    how_to_get = (
        "On Debian/Ubuntu: apt-get install dataset-fashion-mnist; or put the four IDX files there, "
        "set PAH_DATA_DIR, or add --set data.download=true (needs network)."
    )
