"""Continual-learning methods, one file each, registered by name in :data:`METHODS`."""

from __future__ import annotations

from pah.methods import agem, derpp, er, ewc, finetune, hnet, joint, lwf, pah, si  # noqa: F401  (registration)
from pah.methods.base import METHODS, Batch, Method

__all__ = ["METHODS", "Method", "Batch"]
