"""Backbones (feature extractors), registered by name in :data:`BACKBONES`, and the task heads."""

from __future__ import annotations

from pah.models import backbones  # noqa: F401  (registration)
from pah.models.backbones import BACKBONES, build_backbone
from pah.models.heads import HyperHeads, StaticHeads, TaskHeads

__all__ = ["BACKBONES", "build_backbone", "TaskHeads", "StaticHeads", "HyperHeads"]
