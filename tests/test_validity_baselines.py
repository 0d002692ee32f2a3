"""The regularisation and replay baselines on real data: each must beat fine-tuning (issue 20).

Real Split-Fashion-MNIST (Debian's `dataset-fashion-mnist`, which ./setup.sh installs) under
van de Ven's protocol (the split-mnist presets: 2x400 MLP, Adam lr 1e-3, batch 128), cut
down to stay cheap: 200 training images per class, 200 iterations a task, one seed.
Fine-tuning forgets here (old tasks fall by 10-40 points after later ones). The EWC shipped
before issue 20 (commit 89fa983: squared mini-batch gradients, lambda 100) forgot about as
much as fine-tuning on this test and failed it (see the bounds below and docs/baselines.md).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import fashion_mnist_available, run_pah

# the split-mnist protocol on Fashion-MNIST, on a subset
PROTOCOL = ["data.name=split-fashion-mnist", "data.train_per_class=200", "data.val_fraction=0", "train.iters_per_task=200"]
#: per method: what the test sets beyond its split-mnist preset
EXTRA = {"ewc": ["method.fisher_samples=200"]}
BASELINES = ("ewc", "si", "er")




pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"),
]


def _train(tmp_path, method: str) -> dict:
    # a process each: trials in threads of one process would share torch's global RNG
    out = tmp_path / method
    sets = [a for kv in [*PROTOCOL, *EXTRA.get(method, []), "seed=0"] for a in ("--set", kv)]
    r = run_pah("train", f"split-mnist-{method}", "--device", "cpu", "--no-progress", "--out", str(out), *sets,
                env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "result.json").read_text())["metrics"]


def test_baselines_beat_finetuning_on_real_fashion_mnist(tmp_path):
    with ThreadPoolExecutor(2) as pool:  # one core each
        results = dict(zip(["finetune", *BASELINES], pool.map(lambda m: _train(tmp_path, m), ["finetune", *BASELINES]),
                           strict=True))
    base = results["finetune"]
    # the yardstick forgets: else beating it would prove nothing
    assert base["forgetting"] >= 0.08, results
    for m in BASELINES:
        r = results[m]
        # measured (seed 0, one process each): finetune ACC 88.5% / forgetting 12.8%, EWC 98.5 / 0.4,
        # SI 95.3 / 4.3, ER 98.1 / 0.8. The EWC of 89fa983: 86.0 / 15.8 (finetune 84.8 / 17.5 in that
        # run, whose trials shared one process's RNG: hence the other finetune figures)
        assert r["forgetting"] <= min(0.07, base["forgetting"] / 2), (m, results)
        assert r["avg_acc"] >= max(0.92, base["avg_acc"] + 0.04), (m, results)
