"""The replay baselines' parts: the reservoir buffer, A-GEM's projection, DER++'s loss, their inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pah.data import Shape
from pah.methods.agem import project
from pah.methods.derpp import derpp_loss
from pah.methods.replay import ReplayBuffer

SHAPE = Shape(num_tasks=5, classes_per_task=2, channels=1, image_size=2, mean=(0.5,), std=(0.5,))


def _stream(buf: ReplayBuffer, n: int, batch: int, seed: int) -> None:
    """Offer samples 0..n-1 (the label is the sample's place in the stream) in batches."""
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        ids = torch.arange(start, min(start + batch, n))
        x = (ids % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
        buf.add(x, ids, ids // 100, g)


def _sequential(n: int, size: int, batch: int, seed: int) -> list[int]:
    """Algorithm R one sample at a time, fed the same random numbers as the batched insertion."""
    g = torch.Generator().manual_seed(seed)
    slots = [-1] * size
    for start in range(0, n, batch):
        u = torch.rand(min(batch, n - start), generator=g, dtype=torch.float64).tolist()
        for i, ui in enumerate(u):
            pos = start + i
            r = pos if pos < size else int(ui * (pos + 1))
            if r < size:
                slots[r] = pos
    return slots


@pytest.mark.parametrize("size, batch", [(10, 4), (3, 64), (50, 50)])
def test_batched_reservoir_is_the_sequential_algorithm(size, batch):
    # a batch larger than the buffer draws the same slot many times: the later sample wins
    buf = ReplayBuffer(size, SHAPE)
    _stream(buf, 700, batch, seed=3)
    assert buf.y.tolist() == _sequential(700, size, batch, seed=3)
    assert int(buf.seen) == 700 and int(buf.filled()) == size
    # every field of a slot comes from the same sample
    assert torch.equal(buf.task, buf.y // 100) and torch.equal(buf.x[:, 0, 0, 0].long(), buf.y % 256)


def test_reservoir_keeps_everything_until_full_then_is_uniform_over_the_stream():
    buf = ReplayBuffer(100, SHAPE)
    _stream(buf, 60, 32, seed=0)
    assert buf.y[:60].tolist() == list(range(60)) and int(buf.filled()) == 60
    # 100 streams of 1,000: each tenth of the stream holds about a tenth of the buffer
    counts = torch.zeros(10)
    for seed in range(100):
        buf = ReplayBuffer(100, SHAPE)
        _stream(buf, 1000, 100, seed)
        counts += torch.bincount(buf.y // 100, minlength=10)
    share = counts / counts.sum()
    assert share.min() > 0.09 and share.max() < 0.11, share  # sd of a share: ~0.003


def test_reservoir_is_deterministic_given_the_seed_and_part_of_the_state_dict():
    a, b, c = (ReplayBuffer(20, SHAPE) for _ in range(3))
    _stream(a, 500, 16, seed=7)
    _stream(b, 500, 16, seed=7)
    _stream(c, 500, 16, seed=8)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    state = a.state_dict()
    assert set(state) == {"x", "y", "task", "seen"}
    d = ReplayBuffer(20, SHAPE)
    d.load_state_dict(state)
    assert torch.equal(d.y, a.y) and int(d.seen) == 500


def test_sampling_draws_only_filled_slots():
    buf = ReplayBuffer(50, SHAPE)
    g = torch.Generator().manual_seed(0)
    assert buf.sample(8, g).tolist() == [0] * 8  # empty: a fixed-shape draw all the same
    _stream(buf, 5, 5, seed=0)
    idx = buf.sample(1000, g)
    assert set(idx.tolist()) == set(range(5))


def test_agem_projection():
    torch.manual_seed(0)
    g = [torch.randn(3, 4), torch.randn(5)]
    ref = [-g[0] + 0.1 * torch.randn(3, 4), -g[1]]  # a conflicting reference gradient
    dot = lambda a, b: sum((x * y).sum() for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(g, ref) < 0
    p = project(g, ref)
    assert dot(p, ref) == pytest.approx(0.0, abs=1e-5)  # projected onto the plane orthogonal to g_ref
    flat_p, flat_g, flat_r = (torch.cat([t.flatten() for t in v]) for v in (p, g, ref))
    coef = (flat_g @ flat_r) / (flat_r @ flat_r)
    assert torch.allclose(flat_p, flat_g - coef * flat_r, atol=1e-6)
    agree = [torch.randn(3, 4), torch.randn(5)]
    ok = [a + 0.5 * b for a, b in zip(agree, g, strict=True)]
    assert dot(agree, ok) >= 0
    assert all(torch.equal(a, b) for a, b in zip(project(agree, ok), agree, strict=True))  # no conflict: unchanged


def test_derpp_loss_parts():
    cur, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    first, z = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    second, y2 = torch.tensor([[0.0, 3.0]]), torch.tensor([0])
    loss, parts = derpp_loss(cur, y, first, z, second, y2, alpha=0.2, beta=0.5)
    ce = F.cross_entropy(cur, y)
    assert parts["mse"].item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert parts["replay_ce"].item() == pytest.approx(3.0 + torch.log1p(torch.exp(torch.tensor(-3.0))).item())
    assert loss.item() == pytest.approx(ce.item() + 0.2 * 2.5 + 0.5 * parts["replay_ce"].item())
    empty, _ = derpp_loss(cur, y, first, z, second, y2, alpha=0.2, beta=0.5, weight=torch.tensor(0.0))
    assert empty.item() == pytest.approx(ce.item())  # an empty buffer adds nothing


def test_replayed_samples_go_through_their_own_tasks_head():
    from pah.config import load_config
    from pah.data import BENCHMARKS, build_tasks, normalizer
    from pah.step import make_batch
    from pah.trial import build_model

    cfg = load_config("split-digits-er", ["data.num_tasks=3"])
    bench = BENCHMARKS.get(cfg.data.name)()
    shape = bench.resolved_shape(cfg.data)
    tasks = build_tasks(bench.load(cfg.data, 0), shape, cfg.data, 0, torch.device("cpu"))
    norm = normalizer(shape, torch.device("cpu"))
    method = build_model(cfg, shape, torch.device("cpu")).eval()
    g = torch.Generator().manual_seed(0)
    for t in range(3):
        method.begin_task(t, tasks[t], norm)
        d = tasks[t]
        method.loss(make_batch(d.x_train, d.y_train, torch.full_like(d.y_train, t), torch.arange(40), t, g, norm, False))
    assert set(method.buffer.task[: int(method.buffer.filled())].tolist()) == {0, 1, 2}
    idx = torch.arange(0, 120, 7)  # all three tasks, in the buffer's order
    x = method.buffer.images(idx, norm, False, g)
    tid = method.buffer.task[idx]
    mixed = method.own_head_logits(x, tid, 2)
    alone = torch.stack([method.logits(x[i : i + 1], int(tid[i]))[0] for i in range(len(idx))])
    assert torch.allclose(mixed, alone, atol=1e-5)


@pytest.mark.parametrize(
    "method, key, value",
    [("er", "buffer_size", -1), ("er", "buffer_size", 0), ("agem", "replay_batch_size", 0),
     ("derpp", "alpha", -0.1), ("derpp", "beta", -1), ("er", "fill", "sometimes")],
)
def test_bad_params_exit_2_naming_the_field(tmp_path, monkeypatch, capsys, method, key, value):
    from pah.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", f"split-digits-{method}", "--set", f"method.{key}={value}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and f"method.{key}" in err[0], err
    assert not list(tmp_path.iterdir())
