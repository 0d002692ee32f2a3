"""Run GMvandeVen/continual-learning's Split-MNIST Task-IL protocol on Fashion-MNIST.

The reference program is run unmodified, from a checkout given on the command line
(``--repo``); nothing is downloaded. Its MNIST loader (torchvision's ``MNIST`` class) is
pointed at Debian's Fashion-MNIST (package ``dataset-fashion-mnist``) by laying the four
IDX files out, decompressed, where that class looks: the reference passes
``<data-dir>/MNIST`` as torchvision's root, whose raw folder is ``<data-dir>/MNIST/MNIST/raw/``. With the files
in place torchvision's ``download=True`` finds them and downloads nothing.

Class order. The reference shuffles the ten labels with ``np.random.permutation`` right
after ``np.random.seed(seed)`` for every seed but 0. With ``--class-order fixed`` (the
default) the label file is written relabelled per seed with the inverse of that
permutation, so that every seed trains the tasks (0,1) (2,3) ... (8,9) of the original
labels, as ``pah`` does with ``data.class_order=fixed``; the split is checked against
the reference's own loader before each seed's first run. ``--class-order reference``
keeps the reference's per-seed shuffle.

Each run writes ``<out>/<method>-s<seed>.json``: the accuracy matrix (row t: test
accuracy on every task after training task t, full test sets), the final per-task
accuracies, ACC, forgetting (Chaudhry et al. 2018, as ``pah.metrics``), BWT, the command
and the reference's commit. ``--summarize`` prints the mean ± sample std table.

Usage: see bench/reference_baselines/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TASKS = 5

# The reference's own options for each method (main.py flags). Hyperparameters not given
# here are the reference's defaults for --experiment=splitMNIST --scenario=task
# (params/param_values.py): EWC lambda 1e5 (exact Fisher over all training samples of the
# task, batch 1), SI c 10 with xi 0.1, LwF T 2, buffer 100 per class (random selection).
METHODS: dict[str, list[str]] = {
    "none": [],
    "joint": ["--joint"],  # trained once on all tasks, for contexts x iters (as the reference's compare.py)
    "ewc": ["--ewc"],
    # online EWC: no --offline; gamma 1 (the ICLR 2025 blog post's setting), lambda as EWC
    "ewc_online": ["--weight-penalty", "--importance-weighting=fisher", "--reg-strength=100000", "--gamma=1.0"],
    "si": ["--si"],
    "lwf": ["--lwf"],
    "agem": ["--agem"],
    "er": ["--replay=buffer"],
}
DEFAULT_METHODS = ["none", "ewc", "ewc_online", "si", "lwf", "agem", "er"]


def reference_permutation(seed: int) -> np.ndarray:
    """The label permutation the reference draws for ``seed`` (identity for seed 0)."""
    if seed == 0:
        return np.arange(10)
    np.random.seed(seed)
    return np.asarray(np.random.permutation(list(range(10))))


def _read_gz(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def prepare_data(fmnist: Path, work: Path, seed: int, class_order: str) -> Path:
    """A data dir for the reference's ``--data-dir``: ``<dir>/MNIST/MNIST/raw/<4 IDX files>``."""
    tag = f"fixed-s{seed}" if class_order == "fixed" else "reference"
    root = work / tag
    raw = root / "MNIST" / "MNIST" / "raw"
    if all((raw / n).exists() for n in FILES):
        return root
    raw.mkdir(parents=True, exist_ok=True)
    shared = work / "images"
    shared.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = fmnist / (name + ".gz")
        if not src.exists():
            raise SystemExit(f"error: {src} is missing (apt-get install dataset-fashion-mnist)")
        data = _read_gz(src)
        if "labels" in name and class_order == "fixed":
            # the reference maps a stored label y to p[y]; store p^-1[y] so that it sees y
            inv = np.argsort(reference_permutation(seed))
            labels = np.frombuffer(data, dtype=np.uint8, offset=8)
            data = data[:8] + inv[labels].astype(np.uint8).tobytes()
        if "images" in name:
            img = shared / name
            if not img.exists():
                tmp = img.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.rename(img)
            target = raw / name
            if not target.exists():
                os.symlink(img, target)
        else:
            (raw / name).write_bytes(data)
    return root


CHECK = r"""
import sys, numpy as np, gzip, torch
sys.path.insert(0, '.')
seed, data_dir, orig, launcher = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if launcher:
    sys.path.insert(0, launcher)
    import launch_reference
    launch_reference.install('.')
from data.load import get_context_set
np.random.seed(seed)
(train, test), cfg = get_context_set(name='splitMNIST', scenario='task', contexts=5, data_dir=data_dir,
                                      exception=(seed == 0))
y = {}
for split, fn in (('train', 'train-labels-idx1-ubyte.gz'), ('test', 't10k-labels-idx1-ubyte.gz')):
    with gzip.open(orig + '/' + fn, 'rb') as f:
        y[split] = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
out = []
for t in range(5):
    out.append([sorted(set(y['train'][train[t].sub_indeces].tolist())),
                sorted(set(y['test'][test[t].sub_indeces].tolist())), len(train[t]), len(test[t])])
if launcher:  # the in-memory images equal torchvision's PIL + ToTensor ones, element for element
    from torchvision import datasets, transforms
    plain = datasets.MNIST(data_dir + '/MNIST', train=True, download=False, transform=transforms.ToTensor())
    sub = train[2]
    for i in range(0, len(sub), 97):
        x, _ = sub[i]
        assert torch.equal(x, plain[sub.sub_indeces[i]][0]), i
print(repr(out))
"""


HERE = Path(__file__).resolve().parent


def check_split(python: str, repo: Path, data_dir: Path, fmnist: Path, seed: int, loader: str) -> list:
    """Ask the reference's own loader which original classes each task got (and, with the
    in-memory loader, check its images against torchvision's)."""
    res = subprocess.run(
        [python, "-c", CHECK, str(seed), str(data_dir), str(fmnist), str(HERE) if loader == "in-memory" else ""],
        cwd=repo, capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"error: the reference's loader failed on {data_dir}:\n{res.stderr[-2000:]}")
    return eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr of lists of ints


def metrics(R: list[list[float]]) -> dict[str, float]:
    T = len(R)
    acc = sum(R[T - 1]) / T
    fm = sum(max(R[k][j] for k in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)
    bwt = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    return {"avg_acc": acc, "forgetting": fm, "bwt": bwt}


def git_commit(repo: Path) -> str | None:
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return res.stdout.strip() or None


def run_one(args, method: str, seed: int, data_dir: Path) -> dict:
    run_dir = args.work / "runs" / f"{method}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "results").mkdir(parents=True)
    entry = [args.python, str(HERE / "launch_reference.py"), str(args.repo)] if args.loader == "in-memory" else [
        args.python, "main.py"]
    cmd = [
        *entry, "--experiment=splitMNIST", "--scenario=task", f"--seed={seed}",
        f"--data-dir={data_dir}", f"--results-dir={run_dir / 'results'}", f"--plot-dir={run_dir / 'plots'}",
        f"--model-dir={run_dir / 'models'}", "--no-save", "--no-gpus", "--results-dict", "--acc-n=100000",
        f"--iters={args.iters * (TASKS if method == 'joint' else 1)}", "--batch=128", "--lr=0.001",
        "--time", *METHODS[method], *args.extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("MPLBACKEND", "Agg")
    full = (["nice", "-n", str(args.nice)] if args.nice else []) + cmd
    t0 = time.time()
    with open(run_dir / "log.txt", "w") as log:
        res = subprocess.run(full, cwd=args.repo, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.time() - t0
    if res.returncode != 0:
        tail = (run_dir / "log.txt").read_text()[-3000:]
        raise SystemExit(f"error: reference run {method} seed {seed} failed (rc {res.returncode}):\n{tail}")
    dicts = list((run_dir / "results").glob("dict-*.pkl"))
    accs = list((run_dir / "results").glob("acc-*.txt"))
    times = list((run_dir / "results").glob("time-*.txt"))
    if len(dicts) != 1 or len(accs) != 1:
        raise SystemExit(f"error: {run_dir / 'results'}: expected one dict-*.pkl and one acc-*.txt")
    with open(dicts[0], "rb") as f:
        pd = pickle.load(f)
    per_ctx = pd["acc per context"]
    rows = len(per_ctx["context 1"])
    R = [[float(per_ctx[f"context {i + 1}"][t]) for i in range(TASKS)] for t in range(rows)]
    final = [float(a) for a in R[-1]]
    out = {
        "method": method,
        "seed": seed,
        "class_order": args.class_order,
        "loader": args.loader,
        "reference_commit": git_commit(args.repo),
        "command": " ".join(cmd),
        "acc_matrix": [[a if i <= t else None for i, a in enumerate(row)] for t, row in enumerate(R)],
        "final_per_task": final,
        "reference_avg_acc": float(accs[0].read_text().split()[0]),
        "train_time_s": float(times[0].read_text().split()[0]) if times else None,
        "wall_s": round(wall, 1),
        "param_stamp": accs[0].name[len("acc-"):-len(".txt")],
    }
    # joint trains once on all tasks: one row only, no forgetting
    out.update(metrics(R) if rows == TASKS else {"avg_acc": sum(final) / TASKS, "forgetting": None, "bwt": None})
    return out


def summarize(out_dir: Path) -> str:
    rows: dict[str, list[dict]] = {}
    for p in sorted(out_dir.glob("*.json")):
        r = json.loads(p.read_text())
        rows.setdefault(r["method"], []).append(r)

    def ms(v: list[float]) -> str:
        v = [100 * x for x in v]
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    lines = ["| method | n | seeds | ACC % | forgetting % | final per-task % (mean) | train s |",
             "|---|---:|---|---:|---:|---|---:|"]
    order = [m for m in METHODS if m in rows]
    for m in order:
        rs = sorted(rows[m], key=lambda r: r["seed"])
        fm = [r["forgetting"] for r in rs if r["forgetting"] is not None]
        per_task = np.mean([r["final_per_task"] for r in rs], axis=0) * 100
        t = [r["train_time_s"] for r in rs if r["train_time_s"]]
        secs = f"{statistics.mean(t):.0f}" if t else "—"
        lines.append(
            f"| {m} | {len(rs)} | {','.join(str(r['seed']) for r in rs)} | {ms([r['avg_acc'] for r in rs])} | "
            f"{ms(fm) if fm else '—'} | {' / '.join(f'{a:.1f}' for a in per_task)} | {secs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, help="checkout of GMvandeVen/continual-learning")
    ap.add_argument("--out", type=Path, required=True, help="where the per-run JSON files go")
    ap.add_argument("--work", type=Path, default=None, help="data layout and run dirs (default: <out>/work)")
    ap.add_argument("--fmnist", type=Path, default=FMNIST_DIR, help="dir with Fashion-MNIST's four .gz IDX files")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--seeds", default="1,2,3", help="comma list of seeds")
    ap.add_argument("--class-order", choices=("fixed", "reference"), default="fixed")
    ap.add_argument("--loader", choices=("in-memory", "torchvision"), default="in-memory",
                    help="in-memory: launch_reference.py serves the same tensors without PIL (fast); "
                    "torchvision: the reference's loader as is")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the reference (needs torch, "
                    "torchvision, numpy, tqdm, matplotlib)")
    ap.add_argument("--iters", type=int, default=2000, help="iterations a task (the protocol: 2000)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for each run")
    ap.add_argument("--nice", type=int, default=10, help="nice level (0: none)")
    ap.add_argument("--skip-done", action="store_true", help="keep runs whose JSON exists")
    ap.add_argument("--summarize", action="store_true", help="only print the table of <out>/*.json")
    ap.add_argument("extra", nargs="*", help="after --: more flags for the reference's main.py (all runs)")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(args.out))
        return 0
    if args.repo is None or not (args.repo / "main.py").exists() or not (args.repo / "params/param_values.py").exists():
        print(f"error: --repo: {args.repo} is not a checkout of GMvandeVen/continual-learning", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"error: --methods: unknown {', '.join(bad)} (known: {', '.join(METHODS)})", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds: {args.seeds!r} is not a comma list of integers", file=sys.stderr)
        return 2
    args.repo = args.repo.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = (args.work or args.out / "work").resolve()
    checked: dict[int, list] = {}
    for seed in seeds:
        for method in methods:
            dest = args.out / f"{method}-s{seed}.json"
            if args.skip_done and dest.exists():
                continue
            data_dir = prepare_data(args.fmnist, args.work / "data", seed, args.class_order)
            if seed not in checked:
                split = check_split(args.python, args.repo, data_dir, args.fmnist, seed, args.loader)
                classes = [s[0] for s in split]
                print(f"seed {seed}: the reference's tasks hold original classes {classes}", flush=True)
                if args.class_order == "fixed" and classes != [[2 * t, 2 * t + 1] for t in range(TASKS)]:
                    print(f"error: seed {seed}: relabelling did not give the fixed split: {split}", file=sys.stderr)
                    return 1
                checked[seed] = classes
            r = run_one(args, method, seed, data_dir)
            r["task_classes"] = checked[seed]  # original Fashion-MNIST labels of each task, per the reference's loader
            dest.write_text(json.dumps(r, indent=1) + "\n")
            print(f"{method} seed {seed}: ACC {100 * r['avg_acc']:.2f}  per task "
                  f"{' '.join(f'{100 * a:.1f}' for a in r['final_per_task'])}  train {r['train_time_s']:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
