"""launch: see the package modules."""

from __future__ import annotations

__all__: list[str] = []
