"""Atomic file writes: a crash never leaves a half-written checkpoint or result.

And the checks on output paths that every command makes before it writes anything, so a
path that cannot be written is exit 2 naming the option, not a traceback halfway through.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = [
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "load_checkpoint",
    "read_json",
    "check_output_file",
    "check_output_dir",
]


class WriteError(OSError):
    """A file could not be written (disk full, read-only, quota); the previous version is intact."""


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: not while other threads write)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    """``_atomic_once``, tried again with backoff while the disk is full (or the network filesystem
    unreachable), reported every 30 s, for up to ``PAH_STORAGE_RETRY_S`` (pah/retry.py): a disk freed
    within that time loses nothing. Then the ``WriteError``, saying for how long it was tried."""
    from pah.retry import retrying

    retrying(lambda: _atomic_once(path, write), f"disk of {Path(path).parent}", what=f"writing {Path(path).name}")


def _atomic_once(path: Path, write) -> None:
    """Write ``path`` through a temp file in its directory, fsync, then rename over it.

    Until the rename, the previous ``path`` is untouched: a full disk, a kill or a signal midway
    leave it as it was (the temp file is removed when Python still runs). A failed write is
    a ``WriteError`` naming the file and saying so.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600: give it the mode open() would (0666 less the umask),
            # so a result or report on a shared project directory stays readable by the group
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror}; {kept}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    import torch

    # serialized in memory first: torch's zip writer reports a full disk as a RuntimeError
    # ("file write failed"), a plain write as the OSError (ENOSPC) it is
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: Path, map_location: Any = None) -> dict[str, Any] | None:
    """The checkpoint at ``path``; None if there is none, or if it cannot be read.

    An unreadable checkpoint (truncated, corrupted on disk, not a checkpoint) is reported in one
    warning line and moved aside to ``PATH.corrupt`` (kept for a look, never loaded again): the
    trial then starts its task sequence again rather than failing on it.
    """
    import sys

    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(state, dict) or "acc_rows" not in state:
            raise ValueError("not a pah checkpoint")
        return state
    except Exception as e:  # noqa: BLE001 - whatever the damage, the answer is the same
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {reason}); moved to {aside.name}, "
              "the trial starts again from task 1", file=sys.stderr, flush=True)
        return None


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
