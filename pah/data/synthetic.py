"""Synthetic data of any shape, for benchmarks and tests: class templates plus noise.

Shape comes from ``data.shape_like`` (another benchmark's declared shape) and the
``data.*`` overrides (pah.conf.shapes.resolved_shape). Each class is a random uint8 template; samples add noise, so the
task is learnable and accuracies mean something.
"""

from __future__ import annotations

import numpy as np

from pah.conf.shapes import SHAPES
from pah.data.base import BENCHMARKS, Arrays, Benchmark


@BENCHMARKS.register("synthetic")
class Synthetic(Benchmark):
    name = "synthetic"
    shape = SHAPES.get(name)

    def load(self, cfg, seed):
        s = self.resolved_shape(cfg)
        n_train = cfg.train_per_class or 100
        n_test = cfg.test_per_class or 20
        rng = np.random.default_rng(777)  # the data never depends on the trial seed
        templates = rng.integers(0, 256, (s.num_classes, s.channels, s.image_size, s.image_size)).astype(np.int16)

        def sample(n):
            y = np.repeat(np.arange(s.num_classes), n)
            noise = rng.integers(-64, 65, (len(y), s.channels, s.image_size, s.image_size), dtype=np.int16)
            return np.clip(templates[y] + noise, 0, 255).astype(np.uint8), y.astype(np.int64)

        return Arrays(*sample(n_train), *sample(n_test))
