"""Split-CIFAR100: the python-pickle release (``cifar-100-python/{train,test}``), 10 tasks x 10 classes."""

from __future__ import annotations

import pickle

import numpy as np

from pah.conf.shapes import SHAPES
from pah.data.base import BENCHMARKS, Arrays, Benchmark, data_roots, decoded
from pah.errors import UserError


@BENCHMARKS.register("split-cifar100")
class SplitCIFAR100(Benchmark):
    name = "split-cifar100"
    shape = SHAPES.get(name)
    how_to_get = "Extract cifar-100-python.tar.gz there, set PAH_DATA_DIR, or add --set data.download=true (needs network)."

    def _find(self, cfg):
        looked = []
        for root in data_roots(cfg):
            d = root / "cifar-100-python"
            looked.append(d)
            if (d / "train").exists() and (d / "test").exists():
                return d, looked
        return None, looked

    def load(self, cfg, seed):
        d, looked = self._find(cfg)
        if d is None and cfg.download:
            import torchvision

            torchvision.datasets.CIFAR100(str(data_roots(cfg)[0]), train=True, download=True)
            d, looked = self._find(cfg)
        if d is None:
            raise self.missing(looked)

        def decode() -> Arrays:
            out = []
            for split in ("train", "test"):
                try:
                    with open(d / split, "rb") as f:
                        batch = pickle.load(f, encoding="latin1")
                    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                    y = np.asarray(batch["fine_labels"], dtype=np.int64)
                except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
                    raise UserError(f"{d / split}: not a CIFAR-100 python pickle ({e})") from None
                out += [x, y]
            return Arrays(*out)

        return decoded(self.name, [d / "train", d / "test"], decode)
