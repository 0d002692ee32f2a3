"""What a reviewer reads: short readable tables, plots whose legends hide nothing, trial states in
plain words, and the best config against the base config. Sweeps are synthetic result.json trees."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import analyze, load_results, render
from analysis.compare import compare_with_base
from analysis.plots import figures
from analysis.report import fmt_field, short_names
from analysis.states import TrialState, trial_status
from analysis.sweep import sweep_summary
from pah.cli import main

T = 5


def _matrix(rng: np.random.Generator, level: float) -> list[list[float | None]]:
    return [[float(np.clip(rng.normal(level, 0.03), 0, 1)) if j <= i else None for j in range(T)] for i in range(T)]


def write_trial(d: Path, *, cid: str, seed: int, params: dict[str, float], R, val_acc: float | None = None) -> dict:
    """A result.json like pah.trial writes, with the config nested and every digit of the sampled floats."""
    cfg: dict = {"seed": seed, "method": {"name": "pah"}, "data": {"name": "split-digits"}, "train": {"epochs_per_task": 2}}
    for k, v in params.items():
        section, key = k.split(".")
        cfg[section][key] = v
    A = np.array([[np.nan if v is None else v for v in row] for row in R])
    obj = {
        "schema": 1, "method": "pah", "dataset": "split-digits", "seed": seed, "config": cfg, "config_id": cid,
        "acc_matrix": R, "metrics": {"avg_acc": float(A[-1].mean())},
        "val_metrics": {"avg_acc": float(A[-1].mean()) if val_acc is None else val_acc, "forgetting": 0.0, "bwt": 0.0},
        "timing": {"train_seconds": 2.5, "images_per_second": 1000.0},
        "env": {"torch": "2.x", "python": "3.11", "device": "cpu", "hostname": "node1"},
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps(obj))
    return obj


def ten_configs(root: Path, seeds: int = 3) -> dict[str, dict[str, float]]:
    """A typical sweep's confirm phase: 10 configs x ``seeds`` seeds, three searched keys with long floats."""
    rng = np.random.default_rng(7)
    configs = {}
    for c in range(10):
        params = {"train.lr": float(10 ** rng.uniform(-3.3, -2)), "train.head_lr": float(10 ** rng.uniform(-3.3, -2)),
                  "method.lambda_kd": float(rng.uniform(0.1, 2.0))}
        cid = f"{c:x}" * 12
        configs[cid] = params
        for seed in range(seeds):
            write_trial(root / "trials" / "confirm" / f"c{c}s{seed}", cid=cid, seed=seed, params=params,
                        R=_matrix(rng, 0.8 + 0.01 * c))
    return configs


# --------------------------------------------------------------------------- readable numbers


def test_short_names_and_fmt_field():
    assert short_names(["train.lr", "train.head_lr", "method.lambda_kd"]) == {
        "train.lr": "lr", "train.head_lr": "head_lr", "method.lambda_kd": "lambda_kd"}
    # two keys that end alike keep one more part each, the others stay short
    assert short_names(["train.lr", "method.lr", "model.backbone"]) == {
        "train.lr": "train.lr", "method.lr": "method.lr", "model.backbone": "backbone"}
    assert fmt_field(0.0027416563468954775) == "0.002742"
    assert fmt_field(0.2349685105759852) == "0.235"
    assert fmt_field(32.0) == "32" and fmt_field(7) == "7" and fmt_field(None) == "—"
    assert fmt_field(1.2345e-5) == "1.234e-05" or fmt_field(1.2345e-5) == "1.235e-05"


def _sig_digits(number: str) -> int:
    mantissa = number.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa)


def test_table_fits_120_columns_with_4_significant_digits(tmp_path, capsys):
    configs = ten_configs(tmp_path / "sweep")
    rc = main(["analyze", str(tmp_path / "sweep")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    # method and dataset are said once, not on every row; keys are short, with their full names below
    assert lines[0] == "all rows: method pah, dataset split-digits"
    header = lines[1].split()
    assert header[0] == "config_id" and set(header[1:4]) == {"lr", "head_lr", "lambda_kd"}
    assert "keys: lambda_kd = method.lambda_kd, lr = train.lr, head_lr = train.head_lr" in out
    full = {"lr": "train.lr", "head_lr": "train.head_lr", "lambda_kd": "method.lambda_kd"}
    for cid, params in configs.items():
        row = next(line for line in lines if line.startswith(cid)).split()
        for k, cell in zip([full[h] for h in header[1:4]], row[1:4], strict=True):
            assert _sig_digits(cell) <= 4, cell
            assert float(cell) == pytest.approx(params[k], rel=1e-3)  # rounded, not another number
    # machines keep every digit: JSON and CSV hold the sampled floats exactly
    rc = main(["analyze", str(tmp_path / "sweep"), "--format", "csv"])
    csv, _ = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(csv))
    assert rc == 0 and len(frame) == 10 and "config_id" in frame.columns
    res = load_results([tmp_path / "sweep"])
    for cid, params in configs.items():
        assert (res.frame[res.frame["config_id"] == cid]["train.lr"] == params["train.lr"]).all()


def test_markdown_and_latex_use_the_same_short_names(tmp_path):
    ten_configs(tmp_path)
    _, s = analyze([tmp_path])
    md = render(s, "md")
    assert md.startswith("| config_id | lambda_kd | lr | head_lr | n |")
    assert "lr = train.lr" in md and "all rows: method pah" in md
    tex = render(s, "latex")
    assert "% keys: lambda_kd = method.lambda_kd, lr = train.lr" in tex and r"lambda\_kd" in tex
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and "555555555555" in ln]
    assert body and all(_sig_digits(c.strip()) <= 4 for c in body[0].split(" & ")[3:6])


# --------------------------------------------------------------------------- legends never hide data


def _overlaps(fig) -> list[str]:
    """Every (legend, axes) pair whose boxes intersect, and legends reaching outside the figure, as drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the canvas savefig uses for PNG
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    problems = []
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if box.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"legend over the data area of axes {ax.get_title()[:40]!r}")
            for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
                if label.get_text() and box.overlaps(label.get_window_extent(renderer)):
                    problems.append(f"legend over the label {label.get_text()[:40]!r}")
        fb = fig.bbox
        if box.x0 < fb.x0 - 1 or box.y0 < fb.y0 - 1 or box.x1 > fb.x1 + 1 or box.y1 > fb.y1 + 1:
            problems.append("legend cut off by the figure edge")
    return problems


def test_the_overlap_check_sees_an_overlap():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    for i in range(10):
        ax.plot([0, 1], [i, i + 1], label=f"config {i} lr=0.002742 lambda_kd=0.235")
    ax.legend(loc="center")
    assert _overlaps(fig)


def test_no_legend_covers_data_for_a_sweep_of_ten_configs(tmp_path):
    ten_configs(tmp_path / "sweep")
    res, s = analyze([tmp_path / "sweep"])
    figs = dict(figures(res.frame, s))
    assert len(figs) == 2 * 10 + 2  # a heatmap and task curves per config, the average curves, the trade-off
    with_legend = 0
    for name, fig in figs.items():
        assert not _overlaps(fig), (name, _overlaps(fig))
        texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        texts += [ax.get_title() for ax in fig.axes]
        for text in texts:  # hyperparameters to 4 significant digits in legends and titles
            for value in re.findall(r"=(-?[0-9.]+(?:e-?\d+)?)", text):
                assert _sig_digits(value) <= 4, (name, text)
        with_legend += bool(fig.legends)
    assert with_legend == 10 + 2  # task curves, average curves and the trade-off all have one
    labels = [t.get_text() for t in figs["acc_vs_forgetting"].legends[0].get_texts()]
    assert any(lab.startswith("555555555555 ") for lab in labels)  # no 'pah / split-digits /' in every entry


def test_a_report_of_many_configs_draws_the_best_ones_and_lists_all(tmp_path, monkeypatch):
    """A sweep of hundreds of configs drew a heatmap and task curves for each (595 figures, 150 s at
    the end of a 1,000-trial sweep): past DETAIL_GROUPS, the best ones by mean ACC (and the base)
    get figures, and every config stays in the table and the trade-off plot."""
    import analysis.html as html

    monkeypatch.setattr(html, "DETAIL_GROUPS", 4)
    configs = ten_configs(tmp_path / "sweep", seeds=1)
    res, s = analyze([tmp_path / "sweep"])
    page = html.render_html(res, s, paths=[tmp_path / "sweep"])
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert len(alts) == 2 * 4 + 2
    ranked = s.table.sort_values("avg_acc_mean", ascending=False)["config_id"].astype(str).tolist()
    drawn = {cid for cid in configs for a in alts if a.startswith("acc_matrix_") and a.endswith(cid)}
    assert drawn == set(ranked[:4])
    assert "the 4 groups with the highest mean test ACC" in page and "of 10;" in page
    assert all(cid in page for cid in configs)  # every config in the seed-averaged table
    from analysis.plots import detail_groups

    ids = s.table["config_id"].astype(str).tolist()
    worst = ranked[-1]
    assert detail_groups(s, 4, keep=[worst]) == sorted(ids.index(c) for c in [*ranked[:4], worst])  # the base kept
    assert detail_groups(s, 10) is None


# --------------------------------------------------------------------------- trial states


def _trial_dirs(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    d = {name: root / "trials" / "search" / name for name in ("done", "asha", "crash", "killed", "retried", "nockpt")}
    write_trial(d["done"], cid="c1", seed=0, params={}, R=_matrix(rng, 0.9))
    for name in ("asha", "killed", "retried"):
        (d[name] / "checkpoint").mkdir(parents=True)
        (d[name] / "checkpoint" / "state.pt").write_bytes(b"x")
    (d["asha"] / "checkpoint" / "meta.json").write_text('{"tasks_completed": 2}')
    (d["asha"] / "stopped.json").write_text(json.dumps({"by": "asha", "tasks_completed": 2, "num_tasks": 5}))
    d["crash"].mkdir(parents=True)  # failed in task 1: no checkpoint, only the trainable's error.json
    (d["crash"] / "error.json").write_text(json.dumps(
        {"type": "NonFiniteLoss", "message": "non-finite loss at task 1/5, epoch 1, step 3\nmore detail", "tasks_done": 0}))
    (d["killed"] / "checkpoint" / "meta.json").write_text('{"tasks_completed": 3}')
    # errored once at task 2, retried, trained on to task 4, then everything was killed: unfinished
    (d["retried"] / "error.json").write_text(json.dumps({"type": "OSError", "message": "disk", "tasks_done": 1}))
    (d["retried"] / "checkpoint" / "meta.json").write_text('{"tasks_completed": 4}')
    d["nockpt"].mkdir(parents=True)  # started by the sweep, killed before its first task ended
    (d["nockpt"] / "params.json").write_text('{"params": {}, "seed": 0}')
    (d["nockpt"] / "log.txt").write_text("start\n")
    return d


def test_trial_states_from_the_files_a_trial_leaves(tmp_path):
    d = _trial_dirs(tmp_path)
    got = {name: trial_status(p) for name, p in d.items()}
    assert got["done"].state is TrialState.FINISHED
    assert got["asha"].state is TrialState.STOPPED and got["asha"].sentence() == "stopped early by asha after task 2/5"
    assert got["crash"].state is TrialState.ERRORED
    assert got["crash"].detail == "NonFiniteLoss: non-finite loss at task 1/5, epoch 1, step 3"  # the first line only
    assert got["killed"].state is TrialState.UNFINISHED and "3 task(s) done" in got["killed"].detail
    assert got["retried"].state is TrialState.UNFINISHED
    assert got["nockpt"].state is TrialState.UNFINISHED


def test_analyze_says_each_state_plainly(tmp_path, capsys):
    _trial_dirs(tmp_path)
    res = load_results([tmp_path])
    assert res.counts() == {"finished": 1, "stopped": 1, "errored": 1, "unfinished": 3, "malformed": 0, "duplicates": 0}
    rc = main(["analyze", str(tmp_path)])
    _, err = capsys.readouterr()
    assert rc == 0
    assert "1 stopped early on purpose by the scheduler (asha): after task 2/5 x1" in err
    assert "crash: NonFiniteLoss: non-finite loss at task 1/5, epoch 1, step 3" in err and "more detail" not in err
    assert "3 unfinished (killed or still running" in err
    assert "checkpoint but no result.json" not in err
    assert "skipped: 1 stopped early by the scheduler, 1 errored, 3 unfinished, 0 malformed" in err


def test_mark_stopped_only_for_partial_sequences(tmp_path):
    pytest.importorskip("ray.tune")
    from sweeps.progress import mark_stopped

    d = tmp_path / "t1"
    d.mkdir()
    assert not mark_stopped(d, {"tasks_completed": 5, "num_tasks": 5}, by="asha")  # it finished: no marker
    assert not (d / "stopped.json").exists()
    assert mark_stopped(d, {"tasks_completed": 2, "num_tasks": 5, "val_avg_acc": 0.8}, by="asha", metric="val_avg_acc")
    assert json.loads((d / "stopped.json").read_text()) == {
        "by": "asha", "tasks_completed": 2, "num_tasks": 5, "metric": "val_avg_acc", "value": 0.8}
    assert trial_status(d).sentence() == "stopped early by asha after task 2/5"
    assert not mark_stopped(tmp_path / "missing", {"tasks_completed": 2, "num_tasks": 5}, by="asha")


# --------------------------------------------------------------------------- best config vs base config


def _frame(groups: dict[str, list[float]], val: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for cid, accs in groups.items():
        for seed, a in enumerate(accs):
            rows.append({"config_id": cid, "seed": seed, "avg_acc": a, "forgetting": 0.05 - a / 100, "bwt": -0.01,
                         "val_avg_acc": (val or groups)[cid][seed], "path": f"/x/{cid}/{seed}/result.json"})
    return pd.DataFrame(rows)


def test_compare_with_base_difference_welch_and_verdict():
    base, best, other = [0.90, 0.91, 0.92], [0.95, 0.96, 0.955], [0.80, 0.82, 0.81]
    c = compare_with_base(_frame({"B": base, "X": best, "Y": other}), candidates=["X", "Y", "B"], base_id="B")
    assert c.best_id == "X" and c.base_id == "B" and c.best_n == c.base_n == 3
    d = c.diff("avg_acc")
    assert d.diff == pytest.approx(np.mean(best) - np.mean(base))
    assert d.p == pytest.approx(stats.ttest_ind(best, base, equal_var=False).pvalue)
    assert c.verdict().startswith("the search beat the base config: ACC +4.50 pp")
    text = "\n".join(c.lines({"X": "lr=0.002742", "B": "lr=0.002 (the spec's base config)"}))
    assert "best  X  lr=0.002742" in text and "base  B  lr=0.002" in text and "Welch p=" in text

    # the base wins on the selection metric: it is the best, and the report says so
    c = compare_with_base(_frame({"B": best, "X": base}), candidates=["X", "B"], base_id="B")
    assert c.best_is_base and "found nothing better than not sweeping" in c.verdict()

    # the best on validation loses to the base on test: said plainly
    c = compare_with_base(_frame({"B": best, "X": base}, val={"B": [0.5] * 3, "X": [0.9] * 3}), candidates=["X"],
                          base_id="B")
    assert c.best_id == "X" and c.selected_by == "val_avg_acc"
    assert c.verdict().startswith("the search lost to the base config") and "prefer the base config" in c.verdict()
    assert compare_with_base(_frame({"X": best}), candidates=["X"], base_id="B") is None  # the base never ran


def _sweep_json(root: Path, base_cid: str, cands: list[dict], **spec) -> None:
    state = {
        "schema": 1,
        "spec": {"name": "toy", "base": "split-digits-pah", "metric": "val_avg_acc", "mode": "max",
                 "space": {"train.lr": {"loguniform": [0.0005, 0.01]}}, "confirm": {"top_k": 1, "seeds": [0, 1, 2]},
                 **spec},
        "phases": {"search": {"done": True, "seconds": 12.5}, "confirm": {"done": True, "seconds": 7.5,
                                                                           "candidates": cands, "search_seed": 0}},
        "base": {"config_id": base_cid, "values": {"train.lr": 0.002}, "point": {"train.lr": 0.002}, "outside": []},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(state))


def fake_sweep(root: Path) -> dict[str, str]:
    """A finished sweep on disk: search trials (one stopped by ASHA, one errored), then the confirm phase of
    the best config and of the base config, 3 seeds each."""
    rng = np.random.default_rng(3)
    lr = {"best": 0.0054321987654, "base": 0.002, "weak": 0.0007777777}
    cid = {"best": "b" * 12, "base": "0" * 12, "weak": "7" * 12}
    level = {"best": 0.97, "base": 0.90, "weak": 0.7}
    search = root / "trials" / "search"
    for name in ("base", "best"):
        write_trial(search / f"s_{name}", cid=cid[name], seed=0, params={"train.lr": lr[name]}, R=_matrix(rng, level[name]))
        (search / f"s_{name}" / "params.json").write_text(json.dumps({"params": {"train.lr": lr[name]}, "seed": 0}))
    (search / "s_weak" / "checkpoint").mkdir(parents=True)
    (search / "s_weak" / "stopped.json").write_text(json.dumps({"by": "asha", "tasks_completed": 2, "num_tasks": 5}))
    (search / "s_nan").mkdir()
    (search / "s_nan" / "error.json").write_text(json.dumps({"type": "NonFiniteLoss", "message": "non-finite loss at "
                                                             "task 1/5, epoch 1, step 2", "tasks_done": 0}))
    for name in ("best", "base"):
        for seed in (1, 2):
            write_trial(root / "trials" / "confirm" / f"c_{name}_{seed}", cid=cid[name], seed=seed,
                        params={"train.lr": lr[name]}, R=_matrix(rng, level[name]))
    cands = [{"dir": str(search / "s_best"), "config_id": cid["best"], "params": {"train.lr": lr["best"]}},
             {"dir": str(search / "s_base"), "config_id": cid["base"], "params": {"train.lr": 0.002}, "base": True}]
    _sweep_json(root, cid["base"], cands)
    return cid


def test_sweep_summary_and_analyze_compare_best_with_base(tmp_path, capsys):
    cid = fake_sweep(tmp_path / "sw")
    lines = sweep_summary(tmp_path / "sw")
    text = "\n".join(lines)
    assert "search: 4 trial(s): 2 finished, 1 stopped early by asha (after task 2/5 x1), 1 errored" in text
    assert "errored: search/s_nan: NonFiniteLoss: non-finite loss at task 1/5, epoch 1, step 2" in text
    assert "confirm: 4 trial(s): 4 finished" in text and "time: search 12 s, confirm 8 s" in text
    assert f"best  {cid['best']}  lr=0.005432" in text and f"base  {cid['base']}  lr=0.002 (the spec's base config)" in text
    assert "verdict: the search beat the base config: ACC +" in text

    rc = main(["analyze", str(tmp_path / "sw"), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)  # stdout stays machine-readable
    assert "best vs base config over 3 vs 3 seed(s)" in err and "verdict: the search beat the base config" in err
