"""The performance benchmark: step time at the first and at the last task, and a short whole trial.

Data is synthetic, shaped like DATASET (tasks, classes, image size, channels), so any
benchmark shape can be measured without its files. For each of the first and the
last task (the last with every earlier task to distil from) it times the training
step of ``pah train`` itself (gather, on-device augmentation, forward, backward,
update) after warm-up: CUDA events on GPU, wall clock on CPU; median over steps. It
also counts the FLOPs of one step (torch's FlopCounterMode) and, on known GPUs, the
fraction of the device's peak that reaches. Never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["configure", "run", "bench_steps"]

#: dense bf16 tensor-core peak, TFLOP/s (vendor figures, SXM parts)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="pah", help="method to time (default: pah)")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18, torchvision's, unchanged)")
    p.add_argument("--dataset", default="split-cifar100", help="shape of the synthetic data (default: split-cifar100)")
    p.add_argument("--tasks", type=int, help="number of tasks (default: the dataset's)")
    p.add_argument("--first-task", type=int, default=1, metavar="N",
                   help="the task (1-based) whose step the last task's is compared with (default: 1; 2 for a method "
                        "whose first task has nothing to replay, such as agem)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--steps", type=int, help="timed steps per task (default: 50 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 15 on CUDA, 3 on CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config override, e.g. train.compile=true or train.precision=fp32")
    p.add_argument("--trial-epochs", type=int, default=1, help="epochs per task of the whole short trial (0: skip it)")
    p.add_argument("--train-per-class", type=int, default=None, help="synthetic training images per class for the trial")
    p.add_argument("--pack", type=int, default=0, metavar="K",
                   help="also run K whole short trials (seeds 0..K-1) packed in this process, taking turns step by step "
                        "(pah.trial.run_packed), and report trials/hour against one trial alone (default: 0, skip)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")


def _config(args: argparse.Namespace, extra: list[str] = ()):
    from pah.config import load_config
    from pah.data import BENCHMARKS
    from pah.methods import METHODS

    METHODS.get(args.method)  # unknown names: exit 2 naming the valid ones
    BENCHMARKS.get(args.dataset)

    shape_like = None if args.dataset == "synthetic" else args.dataset
    over = [f"model.backbone={args.backbone}", f"train.batch_size={args.batch_size}", "model.pretrained=false"]
    if shape_like:
        # the synthetic stand-in augments exactly when the dataset's own preset does
        augment = load_config(f"{shape_like}-{args.method}").data.augment
        over += [f"data.shape_like={shape_like}"] + ([] if augment is None else [f"data.augment={augment}"])
    if args.tasks:
        over.append(f"data.num_tasks={args.tasks}")
    return load_config(f"synthetic-{args.method}", [*over, *args.overrides, *extra])


def _timer(dev):
    import torch

    if dev.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return lambda: start.elapsed_time(end)  # read after the final synchronize
        return timed

    def timed_cpu(fn):
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return lambda: ms
    return timed_cpu


def _at_task(cfg, shape, tasks, norm, dev, task: int):
    """A fresh model brought to the start of ``task`` (earlier tasks begun and ended, not trained),
    and a closure running one training step of ``pah train`` on it."""
    import torch

    from pah.step import TaskStep
    from pah.trial import _precision, build_model, build_optimizer

    method = build_model(cfg, shape, dev)
    optimizer = build_optimizer(method, cfg)
    autocast = _precision(cfg, dev)
    method.train()
    for t in range(task + 1):
        with autocast():
            method.begin_task(t, tasks[t], norm)
        if t < task:
            method.end_task(t, tasks[t], norm)
    gen = torch.Generator(device=dev).manual_seed(task)
    x_all, y_all, ids_all = method.train_data(task, tasks)
    idx = torch.randperm(len(y_all), device=dev, generator=gen)[: cfg.train.batch_size]
    # the step of `pah train` itself, warm-up passed (with train.cuda_graph: captured, then replayed)
    runner = TaskStep(method, optimizer, autocast, (x_all, y_all, ids_all), task, gen, norm, shape.augment,
                      graph=cfg.train.cuda_graph, graph_seed=task)
    count = iter(range(10**9))

    def step() -> None:
        runner(idx, next(count))

    return step


def bench_steps(cfg, dev, steps: int, warmup: int, rounds: int = 5, first: int = 0) -> list[dict[str, Any]]:
    """Median step time at task ``first`` (0-based; default the first) and the last task of ``cfg`` on ``dev``.

    The two are timed in alternating rounds, so drift (clocks, other load on the
    machine) hits both alike and their ratio stays meaningful.
    """
    import dataclasses

    import torch

    from pah.data import BENCHMARKS, build_tasks, normalizer

    bench = BENCHMARKS.get(cfg.data.name)()
    shape = bench.resolved_shape(cfg.data)
    bs = cfg.train.batch_size
    per_class = max(-(-bs // shape.classes_per_task) + 2, 4)  # enough images for one full batch
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_per_class=per_class, test_per_class=2))
    tasks = build_tasks(bench.load(cfg.data, cfg.seed), shape, cfg.data, cfg.seed, dev)
    norm = normalizer(shape, dev)
    if not 0 <= first < shape.num_tasks - 1:
        from pah.errors import UserError

        raise UserError(f"--first-task: {first + 1} is out of range (must be 1 to {shape.num_tasks - 1}, the tasks before the last)")
    which = [first, shape.num_tasks - 1]
    fns = {t: _at_task(cfg, shape, tasks, norm, dev, t) for t in which}
    timed = _timer(dev)
    for t in which:
        for _ in range(warmup):
            fns[t]()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    readers: dict[int, list] = {t: [] for t in which}
    per_round = max(1, -(-steps // rounds))
    for _ in range(rounds):
        for t in which:
            readers[t] += [timed(fns[t]) for _ in range(per_round)]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    runs = []
    for t in which:
        ms = statistics.median(r() for r in readers[t])
        runs.append(
            {
                "method": cfg.method.name,
                "backbone": cfg.model.backbone,
                "dataset": cfg.data.shape_like or cfg.data.name,
                "batch_size": bs,
                "task": t + 1,
                "old_tasks": t,
                "median_step_ms": round(ms, 3),
                "images_per_second": round(bs / ms * 1e3, 1),
                "peak_memory_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
                "gflop_per_step": round(_step_flops(_at_task(_eager(cfg), shape, tasks, norm, dev, t)) / 1e9, 2),
            }
        )
    return runs


def _eager(cfg):
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graph=False))


def _step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _peak(dev) -> float | None:
    import torch

    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run(args: argparse.Namespace) -> int:
    import torch

    from pah.config import LIMITS
    from pah.errors import UserError
    from pah.io import check_output_file
    from pah.trial import resolve_device, run_packed, run_trial

    # ---- every argument checked before anything runs or is written
    limits = {"batch_size": LIMITS["train.batch_size"], "tasks": LIMITS["data.num_tasks"], "steps": (1, 100_000),
              "warmup": (0, 100_000), "trial_epochs": (0, LIMITS["train.epochs_per_task"][1]),
              "train_per_class": LIMITS["data.train_per_class"], "pack": (0, 64)}
    for key, (lo, hi) in limits.items():
        v = getattr(args, key)
        if v is not None and not lo <= v <= hi:
            raise UserError(f"--{key.replace('_', '-')}: {v} is out of range (must be {lo} to {hi})")
    if args.tasks == 1:
        raise UserError("--tasks: needs at least 2 tasks to compare the first and the last")
    if args.first_task < 1 or (args.tasks is not None and args.first_task >= args.tasks):
        raise UserError(f"--first-task: {args.first_task} is out of range (must be 1 to the number of tasks - 1)")
    if args.pack and not args.trial_epochs:
        raise UserError("--pack: needs the whole short trial (--trial-epochs >= 1) to compare with")
    if args.json is not None:
        check_output_file(args.json, "--json")
    dev = resolve_device(args.device)
    cfg = _config(args)
    cuda = dev.type == "cuda"
    steps = args.steps or (50 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (15 if cuda else 3)
    device_name = torch.cuda.get_device_name(dev) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    try:
        runs = bench_steps(cfg, dev, steps, warmup, first=args.first_task - 1)
    except torch.OutOfMemoryError:
        print(f"error: out of memory at batch size {args.batch_size} on {device_name}; try a smaller --batch-size", file=sys.stderr)
        return 1
    peak = _peak(dev)
    for r in runs:
        r["achieved_tflops"] = round(r["gflop_per_step"] / r["median_step_ms"], 3)  # GFLOP/ms = TFLOP/s
        r["fraction_of_peak"] = round(r["achieved_tflops"] / peak, 4) if peak else None

    trial = pack = None
    if args.trial_epochs:
        tcfg = _config(args, [f"train.epochs_per_task={args.trial_epochs}"]
                       + ([f"data.train_per_class={args.train_per_class}"] if args.train_per_class else []))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_trial(tcfg, tmp, device=dev.type, progress=False)
            trial = {"wall_seconds": round(time.perf_counter() - t0, 2), **res["timing"], "epochs_per_task": args.trial_epochs,
                     "train_per_class": tcfg.data.train_per_class or 64, "avg_acc": res["metrics"]["avg_acc"],
                     "import_seconds": _import_seconds()}
        if args.pack:
            import dataclasses

            with tempfile.TemporaryDirectory() as tmp:
                cfgs = [dataclasses.replace(tcfg, seed=s) for s in range(args.pack)]
                t0 = time.perf_counter()
                results = run_packed(cfgs, [Path(tmp) / f"s{s}" for s in range(args.pack)], device=dev.type)
                wall = time.perf_counter() - t0
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
            alone = 3600 / trial["wall_seconds"]
            pack = {"trials": args.pack, "wall_seconds": round(wall, 2), "trials_per_hour": round(3600 * args.pack / wall, 1),
                    "alone_trials_per_hour": round(alone, 1), "speedup": round(3600 * args.pack / wall / alone, 2)}

    _print_table(device_name, runs, trial, pack)
    if args.json:
        from pah.io import atomic_write_json

        atomic_write_json(args.json, {"device": device_name, "torch": torch.__version__, "runs": runs, "trial": trial, "pack": pack,
                                      "last_over_first": round(runs[-1]["median_step_ms"] / runs[0]["median_step_ms"], 3)})
    return 0


def _import_seconds() -> float:
    """Wall time of a fresh interpreter importing what a trial needs (a trial process's first fixed cost)."""
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pah.trial"], check=True)
    return round(time.perf_counter() - t0, 2)


def _print_table(device: str, runs: list[dict], trial: dict | None, pack: dict | None = None) -> None:
    print(f"device: {device}")
    head = f"{'method':8} {'backbone':16} {'data':20} {'batch':>5} {'task':>4} {'old':>4} {'ms/step':>9} {'img/s':>10} {'GFLOP':>8} {'TFLOP/s':>8} {'peak%':>6} {'MiB':>8}"
    print(head)
    print("-" * len(head))
    for r in runs:
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] is not None else "-"
        mem = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        print(f"{r['method']:8} {r['backbone']:16} {r['dataset']:20} {r['batch_size']:>5} {r['task']:>4} {r['old_tasks']:>4} "
              f"{r['median_step_ms']:>9.2f} {r['images_per_second']:>10.0f} {r['gflop_per_step']:>8.2f} {r['achieved_tflops']:>8.3f} {frac:>6} {mem:>8}")
    first = "first task" if runs[0]["task"] == 1 else f"task {runs[0]['task']}"
    print(f"last task / {first} step time: "
          f"{runs[-1]['median_step_ms'] / runs[0]['median_step_ms']:.2f}x")
    if trial:
        print(f"whole trial ({trial['epochs_per_task']} epoch(s)/task, {trial['train_per_class']} images/class): "
              f"{trial['wall_seconds']:.1f} s wall, {trial['train_seconds']:.1f} s training, {trial['images_per_second']:.0f} img/s")
        print(f"fixed cost: {trial['import_seconds']:.1f} s imports (a fresh process), {trial['setup_seconds']:.1f} s data and model, "
              f"{trial['eval_seconds']:.1f} s evaluation, {trial['wall_seconds'] - trial['train_seconds']:.1f} s outside training in all")
    if pack:
        print(f"packed: {pack['trials']} trials in one process, {pack['wall_seconds']:.1f} s wall: {pack['trials_per_hour']:.0f} trials/hour "
              f"vs {pack['alone_trials_per_hour']:.0f} one at a time ({pack['speedup']:.2f}x)")
