"""Batched, on-device input pipeline: uint8 -> normalised float, random crop and flip.

Every function works on the whole batch at once with tensor ops, so the training
step never touches Python per sample and never leaves the device.
"""

from __future__ import annotations

import torch

__all__ = ["to_float", "random_crop_flip"]


def to_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32."""
    return (x.float().div_(255.0) - mean) / std


def random_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding of H // 8 pixels, then a random horizontal flip, per sample."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    cols = (ox + torch.arange(w, device=dev)).view(n, 1, 1, w)
    cols = torch.where(flip.view(n, 1, 1, 1), cols.flip(-1), cols).expand(n, x.shape[1], h, w)
    # two cheap gathers (rows, then columns) instead of 4-D fancy indexing
    rows = (oy + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows).gather(3, cols)
    return out
