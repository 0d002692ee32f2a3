"""Atomic file writes: a crash never leaves a half-written checkpoint or result.

And the checks on output paths that every command makes before it writes anything, so a
path that cannot be written is exit 2 naming the option, not a traceback halfway through.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "read_json",
    "check_output_file",
    "check_output_dir",
]


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` can be written as a file: not a directory, under a writable directory (or one we can create)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{option} {path}: is a directory; expected a file path")
    if p.exists() and not p.is_file():
        raise UserError(f"{option} {path}: not a regular file")
    _check_creatable(p.parent, option, path)
    return p


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` is, or can be created as, a writable directory."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {path}: is a file; expected a directory")
    _check_creatable(p, option, path)
    return p


def _check_creatable(p: Path, option: str, shown: str | Path) -> None:
    existing = p.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {shown}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {shown}: cannot write in {existing} (permission denied or read-only)")
