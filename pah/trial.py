"""One trial: the whole task sequence, evaluation after every task, a checkpoint after every task.

``run_trial`` reads top to bottom: build data and model, resume if a checkpoint exists,
then per task: begin, train (the hot loop), end, evaluate, checkpoint, report. The hot
loop keeps everything on the device: uint8 data, on-device normalisation and
augmentation, and no host sync except one non-finite check every ``check_every`` steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import socket
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pah import metrics
from pah.config import Config, config_id
from pah.data import BENCHMARKS, TaskData, build_tasks, check_task_sizes, normalizer, to_float
from pah.errors import UserError
from pah.io import atomic_torch_save, atomic_write_json, load_checkpoint, read_json
from pah.methods import METHODS, Method
from pah.models import build_backbone
from pah.step import TaskStep, make_batch, train_step, warmup_factor

__all__ = ["run_trial", "trial_steps", "step_once", "run_packed", "TaskReport", "NonFiniteLoss", "resolve_device", "evaluate", "make_batch", "train_step", "build_model",
           "warmup_factor", "CHECKPOINT"]

#: where a trial keeps its last task checkpoint, relative to its --out directory
CHECKPOINT = Path("checkpoint") / "state.pt"
RESULT = "result.json"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the trial stops (exit code 1) naming where."""


@dataclass
class TaskReport:
    """What a trial knows after finishing a task: handed to ``on_task_end`` (e.g. Ray Tune)."""

    task: int  # 0-based index of the task just finished
    num_tasks: int
    acc_matrix: list[list[float | None]]
    val_matrix: list[list[float | None]]
    metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    train_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected cpu, cuda or auto")
    return torch.device(name)


def _task_seed(seed: int, task: int) -> int:
    """Every task starts from RNG states derived from (seed, task): resuming is exact by construction."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{task}".encode()).digest()[:7], "big")


def _precision(cfg: Config, device: torch.device):
    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if use_bf16:
        # autocast's cast cache would hand a captured graph tensors freed when the context exits
        cache = not (cfg.train.cuda_graph and device.type == "cuda")
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext


def build_model(cfg: Config, shape, dev: torch.device) -> Method:
    """The method (backbone + heads) on ``dev``, initialised from ``cfg.seed``; channels_last and compile on CUDA."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model.backbone, shape.channels, cfg.model.pretrained, shape.image_size)
    method = METHODS.get(cfg.method.name)(cfg.method, shape, backbone).to(dev)
    if dev.type == "cuda":
        method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        if cfg.train.compile:
            method.backbone.compile()
    return method


def build_optimizer(method: Method, cfg: Config) -> torch.optim.Optimizer:
    groups = method.param_groups(cfg.train)
    for g in groups:  # the configured rate, which warm-up scales (and a checkpoint keeps)
        g["initial_lr"] = g["lr"]
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum)
    on_cuda = next(method.parameters()).is_cuda
    # fused: one kernel for all parameters on the GPU; capturable: its step count lives on the device (CUDA graphs)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=on_cuda or None, capturable=on_cuda and cfg.train.cuda_graph)


@torch.no_grad()
def evaluate(
    method: Method, tasks: list[TaskData], split: str, norm, batch_size: int, autocast, task_bn_stats: bool = False
) -> list[float]:
    """Accuracy on each given task with its own head (task-incremental); one host sync in all.
    BatchNorm uses running statistics: each task's own recorded ones with ``task_bn_stats``.
    No cuDNN autotuning here: each task's last, partial batch is a new shape, each a new search."""
    was_training, autotune = method.training, torch.backends.cudnn.benchmark
    method.eval()
    torch.backends.cudnn.benchmark = False
    correct, totals = [], []
    try:
        for d in tasks:
            x_all, y_all = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
            c = torch.zeros((), dtype=torch.long, device=y_all.device)
            with method.bn_stats_of(d.task) if task_bn_stats else contextlib.nullcontext():
                for i in range(0, len(y_all), batch_size):
                    with autocast():
                        logits = method.logits(to_float(x_all[i : i + batch_size], *norm), d.task)
                    c += (logits.argmax(1) == y_all[i : i + batch_size]).sum()
            correct.append(c)
            totals.append(max(len(y_all), 1))
    finally:
        method.train(was_training)
        torch.backends.cudnn.benchmark = autotune
    return [int(c) / n for c, n in zip(torch.stack(correct).tolist(), totals, strict=True)] if correct else []


def _env(device: torch.device) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "hostname": socket.gethostname(),
    }
    ray = sys.modules.get("ray")  # the Ray node, under Ray: containers and network namespaces repeat hostnames
    if ray is not None and ray.is_initialized():
        env["node_ip"] = ray.util.get_node_ip_address()
        env["node_id"] = ray.get_runtime_context().get_node_id()  # nodes on one host share their IP
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _pad(rows: list[list[float]], T: int) -> list[list[float | None]]:
    return [row + [None] * (T - len(row)) for row in rows]


def run_trial(
    cfg: Config,
    out_dir: str | Path,
    *,
    device: str = "auto",
    on_task_end: Callable[[TaskReport], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` through its whole task sequence in ``out_dir``; resume from its last checkpoint."""
    steps = trial_steps(cfg, out_dir, device=device, on_task_end=on_task_end, progress=progress)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def trial_steps(
    cfg: Config,
    out_dir: str | Path,
    *,
    device: str = "auto",
    on_task_end: Callable[[TaskReport], None] | None = None,
    progress: bool = True,
) -> Generator[None, None, dict[str, Any]]:
    """:func:`run_trial` as a generator that yields after every training step and returns the
    result: several trials can take turns in one process (see :func:`run_packed`)."""
    started = time.perf_counter()
    out = Path(out_dir)
    dev = resolve_device(device)
    cid = config_id(cfg)
    if (out / RESULT).exists():  # finished already: idempotent, nothing to train
        done = read_json(out / RESULT)
        if done.get("config_id") == cid and done.get("seed") == cfg.seed:
            return done
        raise UserError(f"--out {out}: holds the result of another config ({done.get('config_id')}, seed {done.get('seed')})")

    # ---- data on the device, model, optimiser (all before anything is written)
    bench = BENCHMARKS.get(cfg.data.name)()
    shape = bench.resolved_shape(cfg.data)
    tasks = build_tasks(bench.load(cfg.data, cfg.seed), shape, cfg.data, cfg.seed, dev)
    check_task_sizes(cfg, [len(d.y_train) for d in tasks])  # a task without a training image has no batch
    norm = normalizer(shape, dev)
    method = build_model(cfg, shape, dev)
    optimizer = build_optimizer(method, cfg)
    autocast = _precision(cfg, dev)
    T = shape.num_tasks

    # ---- resume from the last finished task, if any
    acc_rows: list[list[float]] = []
    val_rows: list[list[float]] = []
    timing = {"train_seconds": 0.0, "images": 0}
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(ckpt_path, map_location=dev)  # None if absent or unreadable (warned)
    if state is not None:
        if state["config_id"] != cid or state["seed"] != cfg.seed:
            raise UserError(f"--out {out}: its checkpoint belongs to another config ({state['config_id']}, seed {state['seed']})")
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        acc_rows, val_rows, timing = state["acc_rows"], state["val_rows"], state["timing"]
    out.mkdir(parents=True, exist_ok=True)
    setup_seconds = time.perf_counter() - started  # this start's fixed cost: data, model, resume

    for t in range(len(acc_rows), T):
        # ---- begin task: per-task RNG, method hook (teacher snapshot, prototype init)
        torch.manual_seed(_task_seed(cfg.seed, t))
        gen = torch.Generator(device=dev).manual_seed(_task_seed(cfg.seed, t))
        method.bn_frozen = cfg.train.batchnorm == "freeze" and t > 0
        method.train()
        with autocast():
            method.begin_task(t, tasks[t], norm)
        x_all, y_all, ids_all = method.train_data(t, tasks)
        n = len(y_all)
        bs = min(cfg.train.batch_size, n)
        steps = n // bs  # full batches only: one shape for every step (cudnn, compile)
        # a fixed number of steps (train.iters_per_task) takes as many shuffled passes as it needs
        total = cfg.train.iters_per_task or steps * cfg.train.epochs_per_task
        epochs = -(-total // steps)
        warmup = min(cfg.train.warmup_steps, total // 5)  # never more than a fifth of a short task
        runner = TaskStep(method, optimizer, autocast, (x_all, y_all, ids_all), t, gen, norm, shape.augment,
                          warmup=warmup, graph=cfg.train.cuda_graph, graph_seed=_task_seed(cfg.seed, T + t))
        bar = _progress(progress, total, f"task {t + 1}/{T}")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()

        # ---- the hot loop
        for epoch in range(epochs):
            perm = torch.randperm(n, device=dev, generator=gen)
            for step in range(min(steps, total - epoch * steps)):
                loss = runner(perm[step * bs : (step + 1) * bs], epoch * steps + step)
                done = epoch * steps + step + 1
                if done % cfg.train.check_every == 0 or done == total:  # the only host sync
                    _check_finite(runner.first_bad, t, T, steps)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if bar is not None:
                    bar.update(1)
                yield
        runner.close()
        if bar is not None:
            bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timing["train_seconds"] += time.perf_counter() - t0
        timing["images"] += total * bs

        # ---- end task (EWC's Fisher, a replay buffer's fill, the frozen copy), evaluate every seen task, ...
        t1 = time.perf_counter()
        method.end_task(t, tasks[t], norm)
        timing["end_task_seconds"] = timing.get("end_task_seconds", 0.0) + time.perf_counter() - t1
        per_task = cfg.train.batchnorm == "task"
        if per_task:
            method.keep_bn_stats(t)
        t1 = time.perf_counter()
        acc_rows.append(evaluate(method, tasks[: t + 1], "test", norm, cfg.train.eval_batch_size, autocast, per_task))
        val_rows.append(evaluate(method, tasks[: t + 1], "val", norm, cfg.train.eval_batch_size, autocast, per_task))
        timing["eval_seconds"] = timing.get("eval_seconds", 0.0) + time.perf_counter() - t1
        atomic_torch_save(
            ckpt_path,
            {
                "schema": 1,
                "config_id": cid,
                "seed": cfg.seed,
                "config": cfg.to_dict(),
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "acc_rows": acc_rows,
                "val_rows": val_rows,
                "timing": timing,
            },
        )
        if on_task_end is not None:
            on_task_end(
                TaskReport(
                    task=t,
                    num_tasks=T,
                    acc_matrix=_pad(acc_rows, T),
                    val_matrix=_pad(val_rows, T),
                    metrics=metrics.summarize(acc_rows),
                    val_metrics=metrics.summarize(val_rows) if any(len(d.y_val) for d in tasks) else {},
                    checkpoint_dir=ckpt_path.parent,
                    train_seconds=timing["train_seconds"],
                )
            )

    result = {
        "schema": 1,
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "config_id": cid,
        "acc_matrix": _pad(acc_rows, T),
        "val_matrix": _pad(val_rows, T),
        "metrics": metrics.summarize(acc_rows),
        "val_metrics": metrics.summarize(val_rows) if any(len(d.y_val) for d in tasks) else None,
        "timing": {
            "train_seconds": round(timing["train_seconds"], 3),
            "images_per_second": round(timing["images"] / max(timing["train_seconds"], 1e-9), 1),
            "eval_seconds": round(timing.get("eval_seconds", 0.0), 3),
            "end_task_seconds": round(timing.get("end_task_seconds", 0.0), 3),
            "setup_seconds": round(setup_seconds, 3),
        },
        "env": _env(dev),
    }
    atomic_write_json(out / RESULT, result)
    return result


def step_once(steps: Generator[None, None, dict[str, Any]], stream: Any = None) -> tuple[str, Any] | None:
    """Advance one trial of ``trial_steps`` by one step, on its own CUDA ``stream`` if given.

    None while the trial goes on; ``("done", result)`` when it has finished; ``("error", exc)``
    when it failed (one trial's failure is its own: the caller goes on with the others).
    """
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        try:
            next(steps)
        except StopIteration as done:
            return "done", done.value
        except Exception as e:  # noqa: BLE001 - returned to the caller, whose trial it is
            return "error", e
    return None


def run_packed(
    cfgs: Sequence[Config],
    out_dirs: Sequence[str | Path],
    *,
    device: str = "auto",
    on_task_end: Callable[[int, TaskReport], None] | None = None,
) -> list[dict[str, Any] | Exception]:
    """Train several trials of one architecture in this process, taking turns step by step.

    Each trial keeps everything of its own (data on the device, model, optimizer, generators,
    checkpoint, ``result.json``) and ends with the same matrices as when run alone: its
    randomness comes from its own generators and from RNG states seeded at the start of each
    of its tasks. On CUDA each trial issues its work on a stream of its own, so that one
    trial's kernels keep the GPU busy while Python prepares another's. A trial that fails ends
    alone: its exception is returned in its place and the others go on. ``on_task_end(i, report)``
    is called for trial ``i``'s tasks.
    """
    if len(cfgs) != len(out_dirs) or not cfgs:
        raise ValueError("run_packed: one output directory per config, at least one")
    archs = {(c.method.name, c.model.backbone, c.data.name) for c in cfgs}
    if len(archs) > 1:
        shown = "; ".join(f"{m}/{b}/{d}" for m, b, d in sorted(archs))
        raise UserError(f"packed trials differ in architecture ({shown}): pack trials of one method, backbone and dataset")
    outs = [Path(o).absolute() for o in out_dirs]
    if len(set(outs)) < len(outs):
        raise UserError("packed trials: two trials share an output directory")
    dev = resolve_device(device)
    results: list[dict[str, Any] | Exception | None] = [None] * len(cfgs)
    live: dict[int, Generator[None, None, dict[str, Any]]] = {}
    for i, (cfg, out) in enumerate(zip(cfgs, outs, strict=True)):
        report = None if on_task_end is None else (lambda r, i=i: on_task_end(i, r))
        live[i] = trial_steps(cfg, out, device=dev.type, on_task_end=report, progress=False)
    streams = {i: torch.cuda.Stream(dev) for i in live} if dev.type == "cuda" else {}
    while live:
        for i in list(live):
            ended = step_once(live[i], streams.get(i))
            if ended is not None:
                results[i] = ended[1]
                del live[i]
    if streams:
        torch.cuda.synchronize(dev)
    return results  # type: ignore[return-value]


def _check_finite(first_bad: torch.Tensor, t: int, T: int, steps: int) -> None:
    bad = int(first_bad)
    if bad >= 0:
        epoch, step = divmod(bad, steps)
        raise NonFiniteLoss(f"non-finite loss at task {t + 1}/{T}, epoch {epoch + 1}, step {step + 1}")


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)
