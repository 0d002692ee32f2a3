"""Synthetic data of any shape, for benchmarks and tests: class templates plus noise.

Shape comes from ``data.shape_like`` (another benchmark's declared shape) and the
``data.*`` overrides. Each class is a random uint8 template; samples add noise, so the
task is learnable and accuracies mean something.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pah.data.base import BENCHMARKS, Arrays, Benchmark, Shape


@BENCHMARKS.register("synthetic")
class Synthetic(Benchmark):
    name = "synthetic"
    shape = Shape(num_tasks=5, classes_per_task=2, channels=3, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def resolved_shape(self, cfg):
        base = BENCHMARKS.get(cfg.shape_like).shape if cfg.shape_like else self.shape
        s = dataclasses.replace(
            base,
            channels=cfg.channels or base.channels,
            image_size=cfg.image_size or base.image_size,
        )
        if len(s.mean) != s.channels:
            s = dataclasses.replace(s, mean=(0.5,) * s.channels, std=(0.25,) * s.channels)
        return self.resolved_shape_from(s, cfg)

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
