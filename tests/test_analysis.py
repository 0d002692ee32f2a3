"""pah analyze: loading, seed statistics against scipy, output formats and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import load_results, summarize_dirs
from analysis.plots import pareto_front
from pah.cli import main

RNG = np.random.default_rng(1234)


def matrix(T: int = 3) -> list[list[float | None]]:
    """A random lower-triangular accuracy matrix with `None` above the diagonal."""
    return [[round(float(RNG.uniform(0.4, 1.0)), 6) if j <= i else None for j in range(T)] for i in range(T)]


def hand_metrics(R: list[list[float | None]]) -> dict[str, float]:
    """CONTRACT.md's definitions, written out independently of pah.metrics."""
    A = np.array([[np.nan if v is None else v for v in row] for row in R])
    T = len(A)
    acc = A[-1].mean()
    if T == 1:
        return {"avg_acc": acc, "forgetting": 0.0, "bwt": 0.0}
    fm = np.mean([A[j : T - 1, j].max() - A[-1, j] for j in range(T - 1)])
    bwt = np.mean([A[-1, j] - A[j, j] for j in range(T - 1)])
    return {"avg_acc": acc, "forgetting": fm, "bwt": bwt}


def write_result(trial_dir: Path, *, method: str, config_id: str, seed: int, R, dataset: str = "split-digits",
                 lr: float = 0.002) -> dict:
    obj = {
        "schema": 1,
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "config": {"seed": seed, "method": {"name": method}, "data": {"name": dataset, "num_tasks": len(R)},
                   "train": {"lr": lr}},
        "config_id": config_id,
        "acc_matrix": R,
        "metrics": hand_metrics(R),
        "timing": {"train_seconds": 1.0, "images_per_second": 100.0},
        "env": {"torch": "2.x", "device": "cpu", "hostname": "test"},
    }
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "result.json").write_text(json.dumps(obj))
    return obj


#: (method, config_id, lr, seeds): a sweep with a well-seeded baseline, a rival, and a single-seed config
CONFIGS = [("finetune", "aaa111", 0.002, 3), ("pah", "bbb222", 0.001, 4), ("ewc", "ccc333", 0.01, 1), ("finetune", "ddd444", 0.01, 2)]


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    """SWEEP/search/<trial>/seed<k>/result.json, nested like a Ray Tune experiment."""
    root = tmp_path / "sweep"
    written: dict[str, list[dict]] = {}
    for method, cid, lr, seeds in CONFIGS:
        for seed in range(seeds):
            obj = write_result(root / "search" / f"trial_{cid}" / f"seed{seed}", method=method, config_id=cid, seed=seed,
                               R=matrix(), lr=lr)
            written.setdefault(cid, []).append(obj)
    return root, written


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def expected(objs: list[dict], metric: str) -> dict[str, float | None]:
    x = np.array([hand_metrics(o["acc_matrix"])[metric] for o in objs])
    n = len(x)
    if n < 2:
        return {"mean": x.mean(), "std": None, "ci95": None}
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    return {"mean": x.mean(), "std": x.std(ddof=1), "ci95": (hi - lo) / 2}


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9)


def test_json_statistics_match_scipy(sweep, tmp_path, capsys):
    root, written = sweep
    out = tmp_path / "summary.json"
    rc, stdout, err = run_cli(capsys, str(root), "--format", "json", "--baseline", "aaa111", "--out", str(out))
    assert rc == 0 and stdout == ""
    rows = {r["config_id"]: r for r in json.loads(out.read_text())}
    assert set(rows) == set(written)
    base = written["aaa111"]
    for cid, objs in written.items():
        r = rows[cid]
        assert r["n"] == len(objs) and r["method"] == objs[0]["method"] and r["dataset"] == "split-digits"
        for m in ("avg_acc", "forgetting", "bwt"):
            e = expected(objs, m)
            assert close(r[f"{m}_mean"], e["mean"]), (cid, m)
            assert close(r[f"{m}_std"], e["std"]), (cid, m)
            assert close(r[f"{m}_ci95"], e["ci95"]), (cid, m)
            if cid == "aaa111" or len(objs) < 2:
                assert r[f"{m}_p"] is None  # the baseline itself; Welch's test needs two seeds a side
            else:
                a = [hand_metrics(o["acc_matrix"])[m] for o in objs]
                b = [hand_metrics(o["acc_matrix"])[m] for o in base]
                assert close(r[f"{m}_p"], float(stats.ttest_ind(a, b, equal_var=False).pvalue)), (cid, m)
    assert "fewer than 3 seeds" in err  # ccc333 has one seed, ddd444 two


def test_group_by_method_pools_configs(sweep, capsys):
    root, written = sweep
    rc, stdout, _ = run_cli(capsys, str(root), "--by", "method", "--format", "json")
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(stdout)}
    finetune = written["aaa111"] + written["ddd444"]
    assert rows["finetune"]["n"] == 5 and set(rows["finetune"]) >= {"method", "n", "avg_acc_mean"}
    assert "config_id" not in rows["finetune"] and "avg_acc_p" not in rows["finetune"]
    assert close(rows["finetune"]["avg_acc_mean"], expected(finetune, "avg_acc")["mean"])
    assert close(rows["finetune"]["bwt_ci95"], expected(finetune, "bwt")["ci95"])
    # a config key works as a field too
    rc, stdout, _ = run_cli(capsys, str(root), "--by", "method,train.lr", "--format", "json")
    assert rc == 0 and len(json.loads(stdout)) == 4


def test_default_table_is_percent_with_n_a_for_one_seed(sweep, capsys):
    root, written = sweep
    rc, stdout, err = run_cli(capsys, str(root))
    assert rc == 0
    e = expected(written["bbb222"], "avg_acc")
    squeezed = re.sub(r" +", " ", stdout)  # cells are padded so that their ± signs line up
    assert f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f} (±{100 * e['ci95']:.2f})" in squeezed
    line = next(ln for ln in stdout.splitlines() if "ccc333" in ln)
    assert "n/a" in line and "ewc" in line
    lines = stdout.splitlines()
    assert lines[0] == "all rows: dataset split-digits"  # the same in every row: said once, above the table
    assert lines[1].split()[:3] == ["method", "config_id", "lr"]  # the hyperparameter that tells configs apart
    assert "4 group(s)" in err


def balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_booktabs_bold_best(sweep, capsys):
    root, written = sweep
    rc, tex, _ = run_cli(capsys, str(root), "--format", "latex")
    assert rc == 0 and balanced(tex)
    lines = tex.splitlines()
    for cmd in (r"\begin{tabular}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}"):
        assert sum(ln.startswith(cmd) for ln in lines) == 1, cmd
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len(body) == len(written) and all(ln.endswith(r"\\") for ln in body)
    header = lines[lines.index(r"\toprule") + 1]
    ncols = header.count("&") + 1
    assert all(ln.count("&") + 1 == ncols for ln in body)
    assert r"$\pm$" in tex and "±" not in tex
    # best mean per column in bold: max accuracy, min forgetting, max BWT
    means = {cid: {m: round(100 * expected(objs, m)["mean"], 2) for m in ("avg_acc", "forgetting", "bwt")}
             for cid, objs in written.items()}
    for k, (m, best) in enumerate([("avg_acc", max), ("forgetting", min), ("bwt", max)]):
        target = best(v[m] for v in means.values())
        for ln in body:
            cid = next(c for c in written if c in ln)
            cell = ln.removesuffix(r"\\").split(" & ")[-3 + k].strip()
            assert cell.startswith(r"\textbf{") == (means[cid][m] == target), (m, cell)
            assert f"{means[cid][m]:.2f}" in cell


def test_md_and_csv(sweep, capsys):
    root, written = sweep
    rc, md, _ = run_cli(capsys, str(root), "--format", "md")
    assert rc == 0
    md_lines = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    assert md_lines[0].startswith("| method") and set(md_lines[1]) <= set("|-:") and len(md_lines) == 2 + len(written)
    assert "all rows: dataset split-digits" in md  # below the table, like the other notes
    rc, csv, _ = run_cli(capsys, str(root), "--format", "csv")
    rc2, js, _ = run_cli(capsys, str(root), "--format", "json")
    assert rc == rc2 == 0
    import io

    frame = pd.read_csv(io.StringIO(csv))
    ref = pd.DataFrame(json.loads(js))
    assert list(frame.columns) == list(ref.columns) and len(frame) == len(written)
    assert np.allclose(frame["avg_acc_mean"], ref["avg_acc_mean"], atol=1e-12, rtol=0)


def test_mixed_directory_counts(tmp_path, capsys):
    root = tmp_path / "sweep"
    for seed in range(2):
        write_result(root / "search" / f"t{seed}" / "a" / "b", method="pah", config_id="abc", seed=seed, R=matrix())
    for name in ("t7", "t8"):  # unfinished: a checkpoint, no result yet
        (root / "search" / name / "checkpoint").mkdir(parents=True)
        (root / "search" / name / "checkpoint" / "state.pt").write_bytes(b"x")
    bad = {
        "broken": "{not json",
        "foreign": json.dumps({"schema": 2, "method": "x"}),
        "missing": json.dumps({"schema": 1, "method": "pah", "dataset": "d", "seed": 0}),
        "ragged": json.dumps({"schema": 1, "method": "pah", "dataset": "d", "seed": 0, "config_id": "z",
                              "acc_matrix": [[0.5, None], [None, 0.4]]}),
        "list": "[1, 2]",
    }
    for name, text in bad.items():
        (root / "other" / name).mkdir(parents=True)
        (root / "other" / name / "result.json").write_text(text)

    res = load_results([root])
    assert res.counts() == {"finished": 2, "stopped": 0, "errored": 0, "unfinished": 2, "malformed": 5, "duplicates": 0}
    assert len(res.frame) == 2 and set(res.frame["seed"]) == {0, 1}
    assert {"acc_t1", "acc_t3", "train.lr", "avg_acc"} <= set(res.frame.columns)

    rc, stdout, err = run_cli(capsys, str(root), "--format", "json")
    assert rc == 0 and json.loads(stdout)[0]["n"] == 2
    for name in bad:
        assert str(root / "other" / name / "result.json") in err
    assert "2 unfinished" in err and "5 malformed" in err and "Traceback" not in err

    # the same tree given twice (or a sub-dir of it) loads each file once
    again = load_results([root, root / "search"])
    assert again.finished == 2 and len(again.unfinished) == 2


@pytest.mark.parametrize("R, num_tasks, metrics, why", [
    ([[1, None], [3, 4]], 2, None, "acc_matrix[1][0] is 3, outside [0, 1]"),  # 1-4 as fractions: ACC 350 %
    ([[0.9], [0.8, 0.7, 0.6]], 2, None, "not square: 2 rows of length 1, 3"),  # jagged
    ([[0.9, None, None], [0.8, 0.7, None]], 2, None, "not square: 2 rows of length 3"),
    ([[0.9, None], [0.8, 0.7]], None, None, "acc_matrix is 2x2 but split-digits has 5 tasks"),
    ([[0.9, 0.5], [0.8, 0.7]], 2, None, "acc_matrix[0][1] is 0.5 above the diagonal"),
    ([[0.9, None], [None, 0.7]], 2, None, "acc_matrix[1][0] is None, not a finite number"),
    ([[0.9, None], [0.8, 0.7]], 2, {"avg_acc": 0.9}, "metrics.avg_acc is 0.9 but acc_matrix gives 0.75"),
    ([[0.9, None], [0.8, 0.7]], 2, {"forgetting": -0.1}, "metrics.forgetting is -0.1 but acc_matrix gives 0.1"),
])
def test_bad_matrices_are_skipped_with_a_warning(tmp_path, capsys, R, num_tasks, metrics, why):
    """The issue's hand-written bad results: each one a warning naming its file, counted as malformed."""
    root = tmp_path / "sweep"
    write_result(root / "good", method="pah", config_id="g", seed=0, R=matrix(2))
    bad = write_result(root / "bad", method="pah", config_id="b", seed=0, R=matrix(2))
    bad["acc_matrix"], bad["metrics"] = R, metrics or {}
    bad["config"]["data"]["num_tasks"] = num_tasks  # None: split-digits' own 5 tasks
    (root / "bad" / "result.json").write_text(json.dumps(bad))

    res = load_results([root])
    assert res.finished == 1 and list(res.frame["config_id"]) == ["g"]
    assert len(res.malformed) == 1 and res.malformed[0][0] == root / "bad" / "result.json"
    assert why in res.malformed[0][1]
    rc, _, err = run_cli(capsys, str(root), "--format", "json")
    assert rc == 0 and f"warning: skipped {root / 'bad' / 'result.json'}: " in err and "1 malformed" in err


def test_a_matrix_of_the_dataset_shape_with_its_metrics_loads(tmp_path):
    R = [[0.9 if j <= i else None for j in range(5)] for i in range(5)]
    obj = write_result(tmp_path / "t", method="pah", config_id="a", seed=0, R=R)
    obj["config"]["data"].pop("num_tasks")  # split-digits: 5 tasks
    obj["metrics"] = {k: v + 1e-9 for k, v in obj["metrics"].items()}  # float rounding is no disagreement
    (tmp_path / "t" / "result.json").write_text(json.dumps(obj))
    assert load_results([tmp_path]).finished == 1


def test_duplicate_seed_is_counted_once(tmp_path):
    R = matrix()
    write_result(tmp_path / "a", method="pah", config_id="abc", seed=0, R=R)
    write_result(tmp_path / "b", method="pah", config_id="abc", seed=0, R=R)
    res = load_results([tmp_path])
    assert res.finished == 1 and len(res.duplicates) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{missing}"], "no such file"),
        (["{empty}"], "no finished result.json"),
        (["{sweep}", "--by", "colour"], "colour"),
        (["{sweep}", "--by", "method,"], "--by"),
        (["{sweep}", "--format", "xml"], "xml"),
        (["{sweep}", "--baseline", "nonesuch"], "nonesuch"),
        (["{sweep}", "--baseline", "finetune"], "several groups"),  # two finetune configs: ambiguous
        ([], "DIR"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(sweep, tmp_path, capsys, args, needle):
    root, _ = sweep
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "sweep": root}
    out = tmp_path / "out.txt"
    rc, stdout, err = run_cli(capsys, *[a.format(**paths) for a in args], "--out", str(out))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists() and stdout == ""


def test_summarize_dirs_api(sweep):
    root, written = sweep
    text = summarize_dirs([root], quiet=True)
    assert all(cid in text for cid in written)
    js = json.loads(summarize_dirs([root], by="method", fmt="json", quiet=True))
    assert {r["method"] for r in js} == {"finetune", "pah", "ewc"}
    from pah.errors import UserError

    with pytest.raises(UserError):
        summarize_dirs([root], fmt="xml", quiet=True)


# ---- plots: every figure is written, as PNG and PDF, and is not empty


def test_pareto_front():
    acc = [90.0, 80.0, 85.0, 70.0, 90.0]
    fm = [10.0, 2.0, 12.0, 5.0, 10.0]
    # 2 is beaten by 0 (more accurate, forgets less), 3 by 1; 0 and 4 tie, neither beats the other
    assert pareto_front(acc, fm) == [1, 0, 4]


def _sweep(root: Path) -> None:
    for method, cid, seeds in [("finetune", "aaa", 3), ("pah", "bbb", 3), ("ewc", "ccc", 1)]:
        for seed in range(seeds):
            write_result(root / "search" / cid / str(seed), method=method, config_id=cid, seed=seed, R=matrix(4))


def _optuna_db(root: Path) -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="quick", storage=f"sqlite:///{root / 'optuna.db'}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) * 10 + 0.01 * t.suggest_int("epochs", 1, 5),
                   n_trials=12)


def test_plots_written_and_nonempty(tmp_path, capsys):
    root = tmp_path / "sweep"
    _sweep(root)
    _optuna_db(root)
    figs = tmp_path / "figs"
    assert main(["analyze", str(root), "--plots", str(figs)]) == 0
    assert "plots:" in capsys.readouterr().err
    names = {p.name for p in figs.iterdir()}
    for stem in ["acc_matrix_finetune-split-digits-aaa", "task_curves_pah-split-digits-bbb",
                 "acc_matrix_ewc-split-digits-ccc", "avg_accuracy_curve", "acc_vs_forgetting", "optuna_importance_quick"]:
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    for p in figs.iterdir():
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 1000 and (head.startswith(b"\x89PNG") or head.startswith(b"%PDF")), p


def test_plots_without_optuna_db_and_with_grouping(tmp_path, capsys):
    root = tmp_path / "sweep"
    _sweep(root)
    figs = tmp_path / "figs"
    assert main(["analyze", str(root), "--by", "method", "--plots", str(figs), "--format", "md"]) == 0
    names = {p.name for p in figs.iterdir()}
    assert "acc_matrix_pah.png" in names and not any(n.startswith("optuna") for n in names)


# ---- W&B runs, through a stand-in for wandb's public API (no network in tests)


def test_wandb_runs_are_loaded_with_local_results(tmp_path, capsys, monkeypatch):
    import sys
    import types

    local = write_result(tmp_path / "local", method="pah", config_id="abc", seed=0, R=matrix())
    remote = [write_result(tmp_path / "tmp" / str(s), method="pah", config_id="abc", seed=s, R=matrix()) for s in (1, 2)]

    class Run:
        def __init__(self, i, summary):
            self.id, self.summary = f"run{i}", summary

        def file(self, name):
            raise KeyError(name)  # nothing uploaded: the summary carries the result

    runs = [Run(i, {"result": obj}) for i, obj in enumerate(remote)] + [Run(9, {"loss": 0.1})]
    fake = types.SimpleNamespace(Api=lambda: types.SimpleNamespace(runs=lambda project: runs))
    monkeypatch.setitem(sys.modules, "wandb", fake)

    rc, stdout, err = run_cli(capsys, str(tmp_path / "local"), "--wandb", "me/cl", "--format", "json")
    assert rc == 0, err
    (row,) = json.loads(stdout)
    assert row["n"] == 3 and close(row["avg_acc_mean"], expected([local, *remote], "avg_acc")["mean"])
    rc, _, err = run_cli(capsys, "--wandb", "not a project")
    assert rc == 2 and err.startswith("error: --wandb")


def test_result_file_path_and_baseline_by_label(sweep, capsys):
    root, written = sweep
    one = next(root.rglob("result.json"))
    rc, stdout, _ = run_cli(capsys, str(one), "--format", "json")
    assert rc == 0 and json.loads(stdout)[0]["n"] == 1
    rc, stdout, _ = run_cli(capsys, str(root), "--baseline", "pah / split-digits / bbb222", "--format", "json")
    rows = {r["config_id"]: r for r in json.loads(stdout)}
    assert rc == 0 and rows["bbb222"]["avg_acc_p"] is None and rows["aaa111"]["avg_acc_p"] is not None


def test_declared_task_counts_are_the_benchmarks_own():
    """analysis takes each benchmark's number of tasks from pah.conf (no torch): the same as pah.data's."""
    from analysis.load import _declared_tasks
    from pah.data import BENCHMARKS

    assert {n: _declared_tasks(n) for n in BENCHMARKS.names()} == {
        n: BENCHMARKS.get(n).shape.num_tasks for n in BENCHMARKS.names()}
    assert _declared_tasks("no-such-dataset") is None
