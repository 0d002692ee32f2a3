"""TinyImageNet (64x64, 200 classes), the standard extracted ``tiny-imagenet-200/`` layout.

``wnids.txt``; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` with labels in
``val/val_annotations.txt`` (the validation set is the test set, as usual). Decoding
100k JPEGs takes a minute, so the arrays are decoded once per machine and then read from the
decoded-array cache (see :func:`pah.data.base.decoded`).
"""

from __future__ import annotations

import numpy as np

from pah.conf.shapes import SHAPES
from pah.data.base import BENCHMARKS, Arrays, Benchmark, data_roots, decoded
from pah.errors import UserError


def _read_images(paths) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(paths), 3, 64, 64), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.uint8).transpose(2, 0, 1)
    return out


@BENCHMARKS.register("tiny-imagenet")
class TinyImageNet(Benchmark):
    name = "tiny-imagenet"
    shape = SHAPES.get(name)
    how_to_get = "Download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip), extract it there, or set PAH_DATA_DIR."

    def load(self, cfg, seed):
        looked = []
        for root in data_roots(cfg):
            d = root / "tiny-imagenet-200"
            looked.append(d)
            if (d / "wnids.txt").exists():
                break
        else:
            raise self.missing(looked)
        ann = d / "val" / "val_annotations.txt"
        if not ann.exists():
            raise UserError(f"{ann}: missing (the TinyImageNet validation labels)")
        # keyed by the index files and the train folder (a class added or removed changes its mtime)
        return decoded(self.name, [d / "wnids.txt", ann, d / "train"], lambda: self._decode(d, ann))

    @staticmethod
    def _decode(d, ann) -> Arrays:
        wnids = [w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()]
        index = {w: i for i, w in enumerate(wnids)}
        train_paths, y_train = [], []
        for w in wnids:
            files = sorted((d / "train" / w / "images").glob("*.JPEG"))
            if not files:
                raise UserError(f"{d / 'train' / w / 'images'}: no JPEG images for class {w}")
            train_paths += files
            y_train += [index[w]] * len(files)
        test_paths, y_test = [], []
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                test_paths.append(d / "val" / "images" / parts[0])
                y_test.append(index[parts[1]])
        return Arrays(
            _read_images(train_paths), np.asarray(y_train, np.int64), _read_images(test_paths), np.asarray(y_test, np.int64)
        )
