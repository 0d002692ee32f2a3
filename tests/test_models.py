import pytest
import torch

from pah.config import load_config
from pah.data import BENCHMARKS, build_tasks, normalizer, to_float
from pah.methods import METHODS, Batch
from pah.methods.lwf import OldLogitDistillation
from pah.models import build_backbone
from pah.models.heads import HyperHeads, StaticHeads


@pytest.mark.parametrize(
    "name, channels, size, dim",
    [("small-cnn", 1, 8, 128), ("reduced-resnet18", 3, 32, 160), ("resnet18-cifar", 3, 32, 512), ("resnet18", 1, 28, 512), ("mobilenetv2", 3, 32, 1280)],
)
def test_backbones_map_images_to_features(name, channels, size, dim):
    net = build_backbone(name, channels)
    assert net.out_dim == dim
    assert net(torch.randn(2, channels, size, size)).shape == (2, dim)


def test_hypernetwork_emits_one_head_per_task_in_one_call():
    conds = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(10, 1, 5, 5)) for _ in range(4))
    heads = HyperHeads(conds, classes=10, dim=64, hidden=16, layers=1)
    W, b = heads.heads(range(3))
    assert W.shape == (3, 10, 64) and b.shape == (3, 10)
    # the head of a task depends on that task's prototypes only
    W2, _ = heads.heads([0, 1, 2, 3])
    torch.testing.assert_close(W2[:3], W)
    assert heads.hnet.body[0].in_features == 10 * 1 * 5 * 5


def test_static_heads_keep_unused_heads_out_of_the_gradient():
    heads = StaticHeads(3, 2, 4)
    W, b = heads.heads([1])
    (W.sum() + b.sum()).backward()
    assert heads.weight[0].grad is None and heads.weight[1].grad is not None


def _method_on_digits(name, overrides=()):
    cfg = load_config(f"split-digits-{name}", list(overrides))
    bench = BENCHMARKS.get("split-digits")()
    shape = bench.resolved_shape(cfg.data)
    tasks = build_tasks(bench.load(cfg.data, 0), shape, cfg.data, 0, torch.device("cpu"))
    method = METHODS.get(name)(cfg.method, shape, build_backbone(cfg.model.backbone, shape.channels))
    return method, tasks, normalizer(shape, torch.device("cpu"))


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("name", ["pah", "hnet", "lwf"])
def test_backbone_passes_per_batch_do_not_grow_with_the_task(name, augment):
    method, tasks, norm = _method_on_digits(name, [f"data.augment={augment}"])
    g = torch.Generator().manual_seed(0)
    for t in range(4):
        method.bn_frozen = t > 0  # train.batchnorm: freeze, as the trial loop sets it
        method.train()
        method.begin_task(t, tasks[t], norm)
        student = _count_calls(method.backbone)
        teacher = _count_calls(method.teacher.backbone) if method.teacher is not None else []
        idx = torch.arange(16)
        x = to_float(tasks[t].x_train[idx], *norm)
        y = tasks[t].y_train[idx]
        batch = Batch(x, y, torch.full_like(y, t), t, g, None if augment else idx)
        loss, parts = method.loss(batch)
        passes = list(student)
        assert torch.isfinite(loss)
        assert passes[0] == 16  # one pass on the batch
        # augmented batches: one teacher pass; otherwise the teacher's logits were cached at begin_task
        assert len(teacher) == (1 if t > 0 and augment else 0)
        if t > 0 and not augment:  # the cache gives exactly what a teacher pass would
            cached = method.loss(Batch(x, y, batch.task_ids, t, torch.Generator().manual_seed(1), idx))[1]["kd"]
            fresh = method.loss(Batch(x, y, batch.task_ids, t, torch.Generator().manual_seed(1), None))[1]["kd"]
            torch.testing.assert_close(fresh, cached)
        if name == "pah":
            # and one on the current prototypes + a fixed-size sample of old prototypes: flat in t
            assert passes == [16, 2 + (2 if t > 0 else 0)]
            assert set(parts) == ({"ce", "proto_ce", "kd", "proto_kd"} if t > 0 else {"ce", "proto_ce"})
        else:
            assert len(passes) == 1
        method.end_task(t, tasks[t], norm)


def test_pah_prototypes_start_from_the_held_out_image():
    method, tasks, norm = _method_on_digits("pah", ["method.prototype_size=8"])
    method.begin_task(0, tasks[0], norm)
    expected = to_float(tasks[0].x_proto, *norm)  # 8x8 digits at prototype size 8: the image itself
    torch.testing.assert_close(method.heads.conditions[0].detach(), expected)
    # old prototypes keep learning through distillation (unless frozen); future ones wait for their task
    method.begin_task(1, tasks[1], norm)
    assert method.heads.conditions[0].requires_grad and method.heads.conditions[1].requires_grad
    assert not method.heads.conditions[2].requires_grad
    frozen, tasks, norm = _method_on_digits("pah", ["method.old_conditions=freeze"])
    frozen.begin_task(0, tasks[0], norm)
    frozen.begin_task(1, tasks[1], norm)
    assert not frozen.heads.conditions[0].requires_grad and frozen.heads.conditions[1].requires_grad


def _grads(method, loss):
    method.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("proto_grad", ["prototypes", "all"])
def test_pah_prototype_losses_train_the_prototypes_only(proto_grad):
    method, tasks, norm = _method_on_digits("pah", [f"method.proto_grad={proto_grad}", "method.lambda_kd=0"])
    g = torch.Generator().manual_seed(0)
    for t in range(2):
        method.bn_frozen = t > 0
        method.train()
        method.begin_task(t, tasks[t], norm)
    with torch.no_grad():  # the student drifts from its teacher, as training would make it
        for p in method.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    idx = torch.arange(16)
    batch = Batch(to_float(tasks[1].x_train[idx], *norm), tasks[1].y_train[idx], torch.full((16,), 1), 1, g, idx)
    loss, parts = method.loss(batch)
    full = _grads(method, loss)
    ce_only = _grads(method, OldLogitDistillation.loss(method, batch)[0])  # the same loss without prototype terms
    shared = [n for n in full if not n.startswith("heads.conditions")]
    assert shared and all(n in ce_only for n in shared)
    same = all(torch.allclose(full[n], ce_only[n], atol=1e-6) for n in shared)
    assert same == (proto_grad == "prototypes")
    # the prototypes themselves do learn from the prototype terms (current and old ones)
    for i in (0, 1):
        n = f"heads.conditions.{i}"
        assert not torch.allclose(full[n], ce_only.get(n, torch.zeros_like(full[n])))



def test_teacher_is_frozen_and_not_saved():
    method, tasks, norm = _method_on_digits("lwf")
    method.begin_task(1, tasks[1], norm)
    assert method.teacher is not None
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert not any(k.startswith("teacher") for k in method.state_dict())


def test_frozen_batchnorm_trains_distils_and_tests_one_function():
    method, tasks, norm = _method_on_digits("lwf")
    x = to_float(tasks[1].x_train[:16], *norm)
    method.bn_frozen = True  # train.batchnorm: freeze, from the second task on
    method.train()
    def stats():
        return [b.clone() for n, b in method.backbone.named_buffers() if "running" in n]

    before = stats()
    train_logits = method.logits(x, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, stats(), strict=True))
    method.eval()
    torch.testing.assert_close(method.logits(x, 0), train_logits)  # what is tested is what was trained
    method.train()
    method.begin_task(1, tasks[1], norm)
    assert method.teacher.cached_logits is not None  # so the teacher is cacheable: no teacher pass per step
    method.bn_frozen = False  # train.batchnorm: adapt: batch statistics, a batch-dependent teacher, no cache
    method.train()
    method.begin_task(1, tasks[1], norm)
    assert method.teacher.cached_logits is None


def test_kd_reduction_sum_weighs_every_old_task_fully():
    from pah.methods.lwf import reduce_over_old_tasks

    kl = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # 2 samples x 2 old tasks
    assert reduce_over_old_tasks(kl, 2, "mean") == 2.0
    assert reduce_over_old_tasks(kl, 2, "sum") == 4.0  # = mean over samples of the sum over old tasks
