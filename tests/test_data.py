import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from pah.config import load_config
from pah.data import BENCHMARKS, build_tasks, random_crop_flip
from pah.data.mnist import read_idx
from pah.errors import UserError


def write_idx(path, array: np.ndarray, gz: bool = True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_mnist(root, n_train=60, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(root / f"train-labels-idx1-ubyte{ext}", np.arange(n_train) % 10, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{ext}", np.arange(n_test) % 10, gz)


def load(name, root, *overrides):
    cfg = load_config(f"{name}-finetune", [f"data.root={root}", *overrides])
    bench = BENCHMARKS.get(name)()
    shape = bench.resolved_shape(cfg.data)
    return shape, build_tasks(bench.load(cfg.data, cfg.seed), shape, cfg.data, cfg.seed, torch.device("cpu"))


@pytest.mark.parametrize("gz", [True, False])
def test_split_mnist_reads_idx_files(tmp_path, gz):
    make_mnist(tmp_path / "mnist", gz=gz)
    shape, tasks = load("split-mnist", tmp_path)
    assert len(tasks) == 5 and tasks[1].classes == [2, 3]
    t = tasks[0]
    assert t.x_train.dtype == torch.uint8 and t.x_train.shape[1:] == (1, 28, 28)
    assert set(t.y_train.tolist()) <= {0, 1} and len(t.y_test) == 4
    assert t.x_proto.shape == (2, 1, 28, 28)
    # 6 images per class: 1 held out for the prototype, 10% of the rest for validation
    assert len(t.y_train) + len(t.y_val) + 2 == 12


def test_fashion_mnist_found_under_its_folder_name(tmp_path):
    make_mnist(tmp_path / "fashion-mnist")
    _, tasks = load("split-fashion-mnist", tmp_path)
    assert len(tasks) == 5


def test_idx_reader_rejects_garbage(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(p)


def test_split_cifar100_reads_python_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 100)):
        labels = list(np.arange(n) % 100)
        pickle.dump({"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), "fine_labels": labels}, open(d / split, "wb"))
    shape, tasks = load("split-cifar100", tmp_path, "data.num_tasks=5", "data.classes_per_task=20")
    assert shape.channels == 3 and len(tasks) == 5 and tasks[4].classes == list(range(80, 100))
    assert tasks[0].x_test.shape == (20, 3, 32, 32)


def test_tiny_imagenet_reads_the_extracted_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("PAH_CACHE_DIR", str(tmp_path / "cache"))
    from PIL import Image

    d = tmp_path / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(4)]
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for i, w in enumerate(wnids):
        (d / "train" / w / "images").mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (64, 64), (i * 60, k * 40, 0)).save(d / "train" / w / "images" / f"{w}_{k}.JPEG")
        name = f"val_{i}.JPEG"
        Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(d / "val" / "images" / name)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    shape, tasks = load("tiny-imagenet", tmp_path, "data.num_tasks=2", "data.classes_per_task=2", "data.val_fraction=0")
    assert [t.classes for t in tasks] == [[0, 1], [2, 3]]
    assert tasks[1].y_test.tolist() == [0, 1] and tasks[1].x_test.shape == (2, 3, 64, 64)
    assert len(list((tmp_path / "cache").glob("tiny-imagenet-*/complete"))) == 1  # decoded once, cached
    _, again = load("tiny-imagenet", tmp_path, "data.num_tasks=2", "data.classes_per_task=2", "data.val_fraction=0")
    assert torch.equal(again[0].x_train, tasks[0].x_train)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PAH_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(UserError) as e:
        load("split-cifar100", tmp_path / "nowhere")
    assert "not found; looked in" in str(e.value) and str(tmp_path / "data") in str(e.value)
    assert "PAH_DATA_DIR" in str(e.value)


def test_splits_are_disjoint_and_seeded(tmp_path):
    _, a = load("split-digits", tmp_path, "seed=1")
    _, b = load("split-digits", tmp_path, "seed=1")
    _, c = load("split-digits", tmp_path, "seed=2")
    assert torch.equal(a[0].x_val, b[0].x_val) and not torch.equal(a[0].x_val, c[0].x_val)
    assert torch.equal(a[0].x_test, c[0].x_test)  # the test set never depends on the seed
    _, d = load("split-digits", tmp_path, "data.class_order=seeded", "seed=3")
    assert sorted(c for t in d for c in t.classes) == list(range(10)) and d[0].classes != [0, 1]


def test_synthetic_takes_another_benchmarks_shape():
    cfg = load_config("synthetic-pah", ["data.shape_like=split-mnist", "data.train_per_class=5", "data.test_per_class=2"])
    bench = BENCHMARKS.get("synthetic")()
    shape = bench.resolved_shape(cfg.data)
    assert (shape.num_tasks, shape.classes_per_task, shape.channels, shape.image_size) == (5, 2, 1, 28)


def test_random_crop_flip_keeps_shape_and_is_seeded():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # a crop of the zero-padded image: every output pixel is 0 or one of the input's pixels
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_decoded_arrays_are_cached_once_and_follow_their_sources(tmp_path, monkeypatch):
    from pah.data.base import Arrays, decoded

    monkeypatch.setenv("PAH_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "raw.bin"
    src.write_bytes(b"one")
    calls = []

    def decode():
        calls.append(1)
        v = len(calls)
        return Arrays(np.full((2, 1, 2, 2), v, np.uint8), np.arange(2), np.zeros((1, 1, 2, 2), np.uint8), np.arange(1))

    first = decoded("toy", [src], decode)
    again = decoded("toy", [src], decode)
    assert len(calls) == 1 and isinstance(again.x_train, np.memmap)
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(again.y_train, [0, 1])
    src.write_bytes(b"changed")  # another size: decoded again, a second entry
    assert int(decoded("toy", [src], decode).x_train[0, 0, 0, 0]) == 2 and len(calls) == 2
    # a damaged entry is decoded again rather than trusted
    for e in (tmp_path / "cache").glob("toy-*"):
        (e / "x_train.npy").write_bytes(b"garbage")
    assert int(decoded("toy", [src], decode).x_train[0, 0, 0, 0]) == 3
    # no cache at all, and a cache that cannot be written: decoded every time, no error
    monkeypatch.setenv("PAH_CACHE_DIR", "off")
    decoded("toy", [src], decode)
    (tmp_path / "ro").write_text("a file where the cache dir should be")
    monkeypatch.setenv("PAH_CACHE_DIR", str(tmp_path / "ro"))
    decoded("toy", [src], decode)
    assert len(calls) == 5
