"""`pah bench` runs and reports (its numbers are never asserted: speed is not a test)."""

import json

from conftest import run_pah


def test_bench_writes_the_contract_json(tmp_path):
    out = tmp_path / "b.json"
    r = run_pah("bench", "--method", "pah", "--backbone", "small-cnn", "--dataset", "split-digits", "--device", "cpu",
                "--steps", "2", "--warmup", "1", "--trial-epochs", "1", "--pack", "2", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["device"].startswith("cpu")
    runs = data["runs"]
    assert [(x["task"], x["old_tasks"]) for x in runs] == [(1, 0), (5, 4)]
    for x in runs:
        assert {"method", "backbone", "dataset", "batch_size", "task", "old_tasks", "median_step_ms", "images_per_second",
                "peak_memory_mib"} <= set(x)
        assert (x["method"], x["backbone"], x["dataset"], x["batch_size"]) == ("pah", "small-cnn", "split-digits", 64)
        assert x["median_step_ms"] > 0 and x["gflop_per_step"] > 0
    assert data["trial"]["wall_seconds"] > 0
    trial = data["trial"]
    assert trial["import_seconds"] > 0 and trial["setup_seconds"] >= 0 and trial["eval_seconds"] > 0
    assert data["pack"]["trials"] == 2 and data["pack"]["trials_per_hour"] > 0 and data["pack"]["speedup"] > 0
    assert "packed: 2 trials in one process" in r.stdout and "fixed cost:" in r.stdout
    assert "last task / first task step time" in r.stdout


def test_bench_bad_input_exits_2(tmp_path):
    for args, what in ((["--method", "nope"], "unknown method 'nope'"), (["--backbone", "vgg"], "unknown backbone 'vgg'"),
                       (["--dataset", "imagenet"], "unknown dataset 'imagenet'"), (["--batch-size", "0"], "--batch-size"),
                       (["--pack", "2", "--trial-epochs", "0"], "--pack"), (["--pack", "999"], "--pack"),
                       (["--tasks", "3", "--first-task", "3"], "--first-task")):
        r = run_pah("bench", *args, "--device", "cpu", "--json", str(tmp_path / "x.json"))
        assert r.returncode == 2 and r.stderr.startswith("error:") and what in r.stderr, r.stderr
        assert not (tmp_path / "x.json").exists()
