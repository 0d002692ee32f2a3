"""Prototype-Augmented Hypernetworks (PAH, arXiv 2505.07450).

Each task owns a grid of learnable prototypes, one ``c x s x s`` image per class,
initialised from a held-out training image of that class resized to ``s x s``. The
task's flattened prototypes condition a hypernetwork that emits the task's head.
The prototypes are also images: upsampled to the input size, they go through the
backbone and are classified by their own task's head.

Loss at task t (teacher = frozen model from the end of task t-1):

    CE(batch)
    + lambda_kd       * tau^2 KL(teacher || student) on every old task's logits of the batch
    + lambda_proto_ce * CE(current prototypes -> their classes)
    + lambda_proto_kd * tau^2 KL(teacher || student) on old prototypes' outputs

Cost per step is flat in t: the batch, the current prototypes and a fixed-size sample
of old prototypes go through the student backbone as *one* batch; the teacher sees
the batch once; all heads come from one hypernetwork call. Old prototypes are frozen,
so the teacher's outputs on them are computed once per task. See docs/method.md for
where this differs from the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pah.data import to_float
from pah.errors import UserError
from pah.methods.base import METHODS, kl_distill
from pah.methods.hnet import HNet, HyperParams
from pah.methods.lwf import old_task_distillation
from pah.models.heads import apply_heads


@dataclass(frozen=True)
class PAHParams(HyperParams):
    name: str = "pah"
    hyper_hidden: int = 16
    prototype_size: int = 10
    #: 1 (grey prototypes, the reference's choice) or the images' channel count
    prototype_channels: int = 1
    prototype_init: Literal["image", "random"] = "image"
    lambda_proto_ce: float = 1.0
    lambda_proto_kd: float = 1.0
    #: old prototypes distilled per step (sampled); 0 means classes_per_task
    proto_replay: int = 0


@METHODS.register("pah")
class PAH(HNet):
    Params = PAHParams

    def make_conditions(self):
        p, s = self.params, self.shape
        if p.prototype_channels not in (1, s.channels):
            raise UserError(f"method.prototype_channels: {p.prototype_channels} must be 1 or the images' {s.channels}")
        if p.prototype_size < 1:
            raise UserError(f"method.prototype_size: {p.prototype_size} must be >= 1")
        shape = (s.classes_per_task, p.prototype_channels, p.prototype_size, p.prototype_size)
        return nn.ParameterList(nn.Parameter(torch.randn(shape)) for _ in range(s.num_tasks))

    def proto_images(self, protos: torch.Tensor) -> torch.Tensor:
        """Prototype grids (n x c x s x s) as backbone inputs (n x C x H x W)."""
        size = self.shape.image_size
        img = F.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
        return img.expand(-1, self.shape.channels, -1, -1)

    def begin_task(self, task, data, norm):
        if self.params.prototype_init == "image":
            with torch.no_grad():
                x = to_float(data.x_proto, *norm)
                if self.params.prototype_channels == 1:
                    x = x.mean(1, keepdim=True)
                s = self.params.prototype_size
                self.heads.conditions[task].copy_(F.interpolate(x, size=(s, s), mode="area"))
        super().begin_task(task, data, norm)
        if self.teacher is not None:
            with torch.no_grad():  # old prototypes and teacher are frozen: their targets are constants
                old = torch.stack(list(self.heads.conditions[:task])).flatten(0, 1)
                W, b = self.teacher.cached_old_heads
                owner = torch.arange(task, device=old.device).repeat_interleave(self.shape.classes_per_task)
                self.old_proto_inputs = self.proto_images(old)  # frozen: upsampled once per task
                feats = self.teacher.backbone(self.old_proto_inputs)
                self.old_proto_targets = torch.einsum("rd,rkd->rk", feats, W[owner]) + b[owner]

    def loss(self, batch):
        p, t, K = self.params, batch.task, self.shape.classes_per_task
        B = batch.x.shape[0]
        current = self.heads.conditions[t]
        inputs = [batch.x, self.proto_images(current).to(batch.x.dtype)]
        if t > 0:
            n_old = p.proto_replay or K
            pick = torch.randint(0, t * K, (n_old,), device=batch.x.device, generator=batch.generator)
            inputs.append(self.old_proto_inputs[pick].to(batch.x.dtype))
        feats = self.backbone(torch.cat(inputs))  # the one student backbone pass
        W, b = self.heads.heads(range(t + 1))  # the one hypernetwork call
        all_logits = apply_heads(feats[:B], W, b)
        ce = F.cross_entropy(self.pick(all_logits, batch.task_ids).float(), batch.y)
        cur_logits = apply_heads(feats[B : B + K], W[t : t + 1], b[t : t + 1])[:, 0]
        proto_ce = F.cross_entropy(cur_logits.float(), torch.arange(K, device=cur_logits.device))
        loss = ce + p.lambda_proto_ce * proto_ce
        parts = {"ce": ce.detach(), "proto_ce": proto_ce.detach()}
        if self.teacher is not None:
            kd = old_task_distillation(self, batch, all_logits, p.temperature)
            owner = pick // K
            old_logits = torch.einsum("rd,rkd->rk", feats[B + K :], W[owner].to(feats.dtype)) + b[owner].to(feats.dtype)
            proto_kd = kl_distill(old_logits, self.old_proto_targets[pick], p.temperature)
            loss = loss + p.lambda_kd * kd + p.lambda_proto_kd * proto_kd
            parts.update(kd=kd.detach(), proto_kd=proto_kd.detach())
        return loss, parts
