"""End to end: two real `pah train` seeds of one config, then `pah analyze` on their parent directory."""

from __future__ import annotations

import json

import numpy as np

from pah.cli import main


def test_train_two_seeds_then_analyze(tmp_path, capsys):
    results = []
    for seed in (0, 1):
        out = tmp_path / "exp" / f"seed{seed}"
        argv = ["train", "split-digits-finetune", "--set", "train.epochs_per_task=1", "--set", f"seed={seed}",
                "--out", str(out), "--device", "cpu"]
        assert main(argv) == 0
        results.append(json.loads((out / "result.json").read_text()))
    capsys.readouterr()
    assert results[0]["config_id"] == results[1]["config_id"]

    assert main(["analyze", str(tmp_path / "exp"), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    (row,) = json.loads(out)
    assert row["n"] == 2 and row["method"] == "finetune" and row["dataset"] == "split-digits"
    for m in ("avg_acc", "forgetting", "bwt"):
        x = [r["metrics"][m] for r in results]
        assert abs(row[f"{m}_mean"] - np.mean(x)) <= 1e-9
        assert abs(row[f"{m}_std"] - np.std(x, ddof=1)) <= 1e-9
    assert "fewer than 3 seeds" in err

    assert main(["analyze", str(tmp_path / "exp")]) == 0
    table = capsys.readouterr().out
    assert "finetune" in table and f"{100 * row['avg_acc_mean']:.2f} ± {100 * row['avg_acc_std']:.2f}" in table
