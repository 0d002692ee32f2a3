"""EWC's per-sample Fisher, SI's path integral, the methods' search spaces, the mlp backbone and
train.iters_per_task: checked against plain per-sample / per-step computations on tiny models."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pah.config import load_config
from pah.data import BENCHMARKS, build_tasks, normalizer, to_float
from pah.errors import UserError
from pah.methods import METHODS
from pah.methods.ewc import per_sample_fisher
from pah.models import build_backbone
from pah.step import make_batch, train_step
from pah.trial import build_model, trial_steps


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    net[1].running_mean.uniform_(-0.5, 0.5)  # BatchNorm in eval mode: its (non-trivial) running statistics
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _loop_fisher(net, W, b, x, y):
    """The definition, one sample and one label at a time with autograd."""
    out = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(x)):
        logp = F.log_softmax(net(x[i : i + 1]) @ W.T + b, dim=-1)[0]
        labels = range(len(logp)) if y is None else [int(y[i])]
        for k in labels:
            g = torch.autograd.grad(logp[k], list(net.parameters()), retain_graph=True)
            weight = logp[k].exp().detach() if y is None else 1.0
            for (n, _), gi in zip(net.named_parameters(), g, strict=True):
                out[n] += weight * gi * gi
    return out


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_vmap_fisher_equals_a_per_sample_loop(kind):
    net = _tiny_net()
    x = torch.randn(13, 1, 6, 6)
    W, b = torch.randn(3, 5), torch.randn(3)
    y = torch.randint(0, 3, (13,)) if kind == "empirical" else None
    expected = _loop_fisher(net, W, b, x, y)
    # a budget of a few samples per chunk: the chunking is exercised too (13 = 3 chunks of 4 + 1)
    numel = sum(p.numel() for p in net.parameters())
    got = per_sample_fisher(net, (W, b), x, y, budget=4 * numel * (3 if y is None else 1))
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-7)
    # and it differs from the square of the batch-mean gradient (the old estimate) by far
    assert got["4.weight"].sum() > 3 * expected["4.weight"].sum() / len(x)


def _digits(name, *sets):
    cfg = load_config(f"split-digits-{name}", ["model.backbone=mlp", *sets])
    bench = BENCHMARKS.get("split-digits")()
    shape = bench.resolved_shape(cfg.data)
    dev = torch.device("cpu")
    tasks = build_tasks(bench.load(cfg.data, 0), shape, cfg.data, 0, dev)
    return cfg, shape, tasks, normalizer(shape, dev), build_model(cfg, shape, dev)


def test_ewc_fisher_is_normalised_per_sample_on_the_current_head():
    cfg, shape, tasks, norm, method = _digits("ewc", "method.fisher_samples=16", "method.fisher=empirical")
    d = tasks[1]
    torch.manual_seed(3)
    fisher = method.estimate_fisher(1, d, norm)
    torch.manual_seed(3)
    idx = torch.randperm(len(d.y_train))[:16]
    W, b = method.heads.heads([1])
    loop = _loop_fisher(method.backbone.eval(), W[0].detach(), b[0].detach(), to_float(d.x_train[idx], *norm), d.y_train[idx])
    for f, (n, _) in zip(fisher, method.backbone.named_parameters(), strict=True):
        torch.testing.assert_close(f, loop[n] / 16, rtol=1e-4, atol=1e-8)


def test_si_path_integral_uses_the_unregularised_gradient():
    """W accumulates -grad(CE) * step, with grad(CE) taken at the weights each step started from,
    even while the SI penalty is in the loss (it is removed from .grad in closed form)."""
    cfg, shape, tasks, norm, method = _digits("si", "method.c=50", "train.optimizer=sgd", "train.lr=0.05")
    opt = torch.optim.SGD(method.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for t in range(2):
        method.begin_task(t, tasks[t], norm)
        expected = [torch.zeros_like(p) for p in method.backbone.parameters()]
        for _ in range(6):
            idx = torch.randint(0, len(tasks[t].y_train), (16,), generator=g)
            batch = make_batch(tasks[t].x_train, tasks[t].y_train, torch.full_like(tasks[t].y_train, t), idx, t, g, norm, False)
            before = [p.detach().clone() for p in method.backbone.parameters()]
            ce = F.cross_entropy(method.logits(batch.x, t), batch.y)
            g_ce = torch.autograd.grad(ce, list(method.backbone.parameters()))
            train_step(method, opt, batch, contextlib.nullcontext)
            for e, gc, b0, p in zip(expected, g_ce, before, method.backbone.parameters(), strict=True):
                e -= gc * (p.detach() - b0)
        for e, w in zip(expected, method._bufs("path"), strict=True):
            torch.testing.assert_close(w, e, rtol=1e-4, atol=1e-9)
        if t == 1:
            assert method._penalised  # the penalty was in the loss, and W still matched CE alone
        anchor = [a.clone() for a in method._bufs("anchor")]
        omega = [o.clone() for o in method._bufs("omega")]
        method.end_task(t, tasks[t], norm)
        for o0, o, w, a, p in zip(omega, method._bufs("omega"), method._bufs("path"), anchor, method.backbone.parameters(),
                                  strict=True):
            torch.testing.assert_close(o, o0 + w / ((p.detach() - a) ** 2 + cfg.method.xi))
    assert sum(o.abs().sum() for o in method._bufs("omega")) > 0


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_space_is_a_valid_sweep_space(name):
    from sweeps.spec import spec_from_dict

    params = METHODS.get(name).Params
    fields = {f for f in params.__dataclass_fields__}
    assert set(params.SPACE) <= fields - {"name"}, (name, params.SPACE)
    if not params.SPACE:
        assert name in ("finetune", "joint"), f"{name} has hyperparameters and no default search space"
        return
    # validated as a spec's space, every end and choice probed as a config of that method
    spec = spec_from_dict({"base": f"split-digits-{name}", "space": {f"method.{k}": v for k, v in params.SPACE.items()}})
    assert set(spec.space) == {f"method.{k}" for k in params.SPACE}


@pytest.mark.parametrize("field, value", [("method.c", -1), ("method.xi", -0.1)])
def test_si_rejects_negative_strengths(field, value):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        load_config("split-digits-si", [f"{field}={value}"])


@pytest.mark.parametrize("field, value", [("method.ewc_lambda", -1), ("method.gamma", 1.5), ("method.fisher_samples", 0),
                                          ("method.fisher", "batched"), ("train.iters_per_task", 0)])
def test_ewc_and_iters_reject_bad_values(field, value):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        load_config("split-digits-ewc", [f"{field}={value}"])


def test_mlp_backbone_is_two_hidden_layers_of_400():
    net = build_backbone("mlp", 1, image_size=28)
    assert net.out_dim == 400 and net(torch.randn(3, 1, 28, 28)).shape == (3, 400)
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [400, 400]
    assert sum(p.numel() for p in net.parameters()) == 784 * 400 + 400 + 400 * 400 + 400


def test_iters_per_task_trains_that_many_steps_per_task(tmp_path):
    # split-digits tasks hold ~290 training images: batch 128 gives 2 full batches, so 5 steps
    # take three shuffled passes, the last cut short
    cfg = load_config("split-digits-finetune", ["train.iters_per_task=5", "train.batch_size=128", "data.num_tasks=2",
                                                "model.backbone=mlp"])
    steps = trial_steps(cfg, tmp_path, device="cpu", progress=False)
    n = 0
    try:
        while True:
            next(steps)
            n += 1
    except StopIteration as done:
        result = done.value
    assert n == 2 * 5
    assert result["config"]["train"]["iters_per_task"] == 5


def test_split_mnist_presets_are_van_de_vens_protocol():
    for m in ("finetune", "ewc", "si"):
        cfg = load_config(f"split-mnist-{m}")
        t = cfg.train
        assert (cfg.model.backbone, t.iters_per_task, t.batch_size, t.lr, t.head_lr, t.warmup_steps) == ("mlp", 2000, 128, 1e-3, 1e-3, 0)
        assert (t.optimizer, t.weight_decay, cfg.data.augment) == ("adamw", 0.0, False)
    assert load_config("split-mnist-ewc").method.ewc_lambda == 1e5
    assert (load_config("split-mnist-si").method.c, load_config("split-mnist-si").method.xi) == (10.0, 0.1)
