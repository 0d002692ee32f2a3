"""Split-Digits: scikit-learn's bundled 8x8 digits, 5 tasks x 2 classes. Offline, seconds to run."""

from __future__ import annotations

import numpy as np

from pah.conf.shapes import SHAPES
from pah.data.base import BENCHMARKS, Arrays, Benchmark


@BENCHMARKS.register("split-digits")
class SplitDigits(Benchmark):
    name = "split-digits"
    shape = SHAPES.get(name)

    def load(self, cfg, seed):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
        y = d.target.astype(np.int64)
        # a fixed, stratified 75/25 train/test split: the test set is the same for every seed
        rng = np.random.default_rng(12345)
        test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: int(round((y == c).sum() * 0.25))] for c in range(10)])
        mask = np.zeros(len(y), dtype=bool)
        mask[test] = True
        return Arrays(x[~mask], y[~mask], x[mask], y[mask])
