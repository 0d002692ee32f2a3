"""Online EWC (Kirkpatrick et al. 2017; Schwarz et al. 2018), multi-head.

After each task the diagonal Fisher information of the backbone is estimated on that task's
training data and folded into one running estimate (``F <- gamma * F + F_t``), anchored at
the current weights; the penalty ``lambda * 1/2 * sum F (theta - theta*)^2`` therefore costs
the same at every task.

The Fisher is per sample, as in van de Ven's reference code: on ``fisher_samples`` training
images (a random subset, all when null), each one's own gradient of its log-likelihood under
the current task's head, squared, then averaged over the images:

- ``fisher: exact`` (default): the expectation over the model's own predictive distribution,
  ``F_t = 1/N sum_x sum_y p(y|x) (d log p(y|x) / d theta)^2``;
- ``fisher: empirical``: the true label only, ``F_t = 1/N sum_x (d log p(y_x|x) / d theta)^2``.

Per-sample gradients come from ``torch.func`` (``vmap`` over ``jacrev``/``grad`` of a
``functional_call``), in chunks sized to a fixed memory budget: no Python loop per sample.
The model is in eval mode while estimating (BatchNorm uses its running statistics, as at test
time and as in the reference), and in fp32. Heads are not penalised: in the task-incremental
setting a task's head is trained by its own task only.

``ewc_lambda`` is not portable to a Fisher from squared *mini-batch* gradients (this file's
earlier version, about batch-size times smaller): see docs/baselines.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, vmap

from pah.conf.ewc import EWCParams
from pah.data import to_float
from pah.methods.base import METHODS
from pah.methods.finetune import Finetune

#: per-sample gradients held at once, in floats (labels x samples x backbone parameters): 32 MiB.
#: Larger chunks were no faster on CPU (2x400 MLP: memory traffic dominates), smaller ones slower
FISHER_BUDGET = 1 << 23
#: the same on CUDA: 1 GiB. With 32 MiB a ResNet-18's chunk is one sample, and online EWC's
#: Fisher on 1,000 images outlasted a whole trial on an H200 (bench/RESULTS.md, 2026-12-04).
#: CPU keeps the budget above, so its sums (and numerics) are what they were
FISHER_BUDGET_CUDA = 1 << 28


def per_sample_fisher(
    backbone: torch.nn.Module,
    head: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    budget: int | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over the samples of ``x`` of each one's squared log-likelihood gradient w.r.t. the
    backbone's parameters (by name), with the head ``(W, b)`` fixed.

    ``y`` given: the empirical Fisher (true labels). ``y`` None: the exact Fisher, every label
    weighted by the model's own probability of it. The backbone runs as it is (call it in eval
    mode: a sample's output must not depend on the rest of its batch). ``budget``: floats of
    per-sample gradients held at once (default: FISHER_BUDGET, FISHER_BUDGET_CUDA on CUDA)."""
    if budget is None:
        budget = FISHER_BUDGET_CUDA if x.device.type == "cuda" else FISHER_BUDGET
    params = {n: p.detach() for n, p in backbone.named_parameters()}
    buffers = {n: b for n, b in backbone.named_buffers()}
    W, b = (t.detach().float() for t in head)
    K = W.shape[0]

    def log_probs(p, xi):  # one sample: its K log-probabilities under the head (and a copy, as aux)
        feats = functional_call(backbone, (p, buffers), (xi.unsqueeze(0),))
        out = F.log_softmax(feats.float() @ W.T + b, dim=-1)[0]
        return out, out.detach()

    def exact(p, xi):  # sum_y p(y|x) g_y^2, with g_y = d log p(y|x) / d theta
        jac, lp = jacrev(log_probs, has_aux=True)(p, xi)  # jac: name -> K x shape
        weights = lp.exp()
        return {n: torch.einsum("k,k...->...", weights, j * j) for n, j in jac.items()}

    def empirical(p, xi, yi):  # g^2 for the true label only
        g = grad(lambda q: -log_probs(q, xi)[0].gather(0, yi.unsqueeze(0)).sum())(p)
        return {n: v * v for n, v in g.items()}

    numel = sum(p.numel() for p in params.values())
    chunk = max(1, budget // (numel * (K if y is None else 1)))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.no_grad():  # torch.func computes the gradients; nothing here needs autograd's graph
        for i in range(0, len(x), chunk):
            if y is None:
                f = vmap(exact, in_dims=(None, 0))(params, x[i : i + chunk])
            else:
                f = vmap(empirical, in_dims=(None, 0, 0))(params, x[i : i + chunk], y[i : i + chunk])
            for n, v in f.items():
                total[n] += v.sum(0)
    return total


@METHODS.register("ewc")
class EWC(Finetune):
    Params = EWCParams

    def __init__(self, params, shape, backbone):
        super().__init__(params, shape, backbone)
        self._names = [n for n, _ in self.backbone.named_parameters()]
        for i, p in enumerate(self.backbone.parameters()):
            self.register_buffer(f"fisher_{i}", torch.zeros_like(p))
            self.register_buffer(f"anchor_{i}", torch.zeros_like(p))

    def _buffers_of(self, kind: str) -> list[torch.Tensor]:
        return [getattr(self, f"{kind}_{i}") for i in range(len(self._names))]

    def loss(self, batch):
        ce, parts = super().loss(batch)
        if batch.task == 0:
            return ce, parts
        params = list(self.backbone.parameters())
        diffs = torch._foreach_sub(params, self._buffers_of("anchor"))
        penalty = sum((f * d * d).sum() for f, d in zip(self._buffers_of("fisher"), diffs, strict=True))
        return ce + 0.5 * self.params.ewc_lambda * penalty, {**parts, "ewc": penalty.detach()}

    @torch.no_grad()
    def estimate_fisher(self, task: int, data, norm) -> list[torch.Tensor]:
        """This task's Fisher (per sample, normalised by the number of samples), one tensor per
        backbone parameter."""
        n = data.x_train.shape[0]
        m = n if self.params.fisher_samples is None else min(n, self.params.fisher_samples)
        # a random subset from the global RNG, which the trial seeds at every task (resume is exact)
        idx = torch.randperm(n)[:m].to(data.x_train.device)
        x, y = to_float(data.x_train[idx], *norm), data.y_train[idx]
        W, b = self.heads.heads([task])
        was_training = self.training
        self.eval()  # BatchNorm on its running statistics, as at test time
        # a compiled backbone runs eagerly here (torch.func transforms of a compiled call: untested)
        compiled = self.backbone.__dict__.get("_compiled_call_impl")
        self.backbone._compiled_call_impl = None
        try:
            total = per_sample_fisher(self.backbone, (W[0], b[0]), x, None if self.params.fisher == "exact" else y)
        finally:
            self.backbone._compiled_call_impl = compiled
            self.train(was_training)
        return [total[name] / m for name in self._names]

    def end_task(self, task, data, norm):
        super().end_task(task, data, norm)
        fisher = self.estimate_fisher(task, data, norm)
        with torch.no_grad():
            for f_old, f_new, a, p in zip(
                self._buffers_of("fisher"), fisher, self._buffers_of("anchor"), self.backbone.parameters(), strict=True
            ):
                f_old.mul_(self.params.gamma).add_(f_new)
                a.copy_(p.detach())
