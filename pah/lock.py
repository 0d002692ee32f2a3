"""One owner per directory: the lock that ``pah train --out DIR`` and ``pah sweep`` hold on their directory.

``DirLock(DIR)`` holds an exclusive POSIX record lock (``fcntl.lockf``) on ``DIR/.pah-lock`` for as
long as the command runs; the file names the holder (host, pid, command, since when). The kernel
drops the lock when the process ends, however it ends (a crash, SIGKILL, a SLURM requeue): a dead
holder never blocks the next run, and there is nothing stale to clean up. A second process that
asks for the lock while the first holds it gets a ``UserError`` naming the holder, before it has
written anything (the lock file itself is written only by the process that holds the lock).

Why ``lockf`` (POSIX locks) rather than ``flock``: POSIX locks are the ones NFS carries between
machines (NLM for NFSv3, built into NFSv4), so two drivers on two nodes of a cluster that share the
sweep dir over NFS exclude each other too. Caveats of shared filesystems, stated once:

- NFSv3 needs ``rpc.statd``/``lockd`` running on the clients (the default); a mount with ``nolock``
  makes every lock local to its node, so two nodes would not see each other's lock.
- A *node* that crashes (rather than a process) holds its NFS locks until it reboots (NFSv3) or
  until its lease expires on the server (NFSv4, about 90 s).
- Lustre grants locks only on mounts with ``-o flock`` (``localflock`` makes them node-local);
  BeeGFS and GPFS support them. Where the filesystem refuses locks altogether (ENOLCK, ENOTSUP),
  the run goes on with a warning that nothing guards the directory.

POSIX locks belong to the process, and closing *any* descriptor of the file drops them: only this
module opens the lock file, and a second ``DirLock`` on a directory this process holds already is
refused here (the kernel would grant it).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["LOCK_FILE", "DirLock", "holder_info", "describe_holder", "Held"]

#: the lock file inside the directory it guards (hidden; the sweep's uploads skip ``.pah-*``)
LOCK_FILE = ".pah-lock"

_held: set[str] = set()  # directories this process holds (POSIX locks do not exclude their own process)
_held_guard = threading.Lock()


class Held(UserError):
    """Another process (named in the message) owns the directory: exit 2."""


def holder_info() -> dict[str, Any]:
    """Who we are, as a lock or lease records it: host, pid, command, start time and the batch job, if any."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job": job,
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0) if job else None,  # a requeue counts up
    }


def describe_holder(info: dict[str, Any] | None) -> str:
    """'pid 123 on host node7 (since ..., SLURM job 42: pah sweep ...)' for an error line."""
    if not info:
        return "another process (its lock file names none)"
    extra = [f"since {info['since']}"] if info.get("since") else []
    if info.get("slurm_job"):
        extra.append(f"SLURM job {info['slurm_job']}")
    if info.get("command"):
        extra.append(f"`{info['command']}`")
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}" + (f" ({', '.join(extra)})" if extra else "")


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class DirLock:
    """The exclusive lock on ``directory`` (created if missing); ``what`` is how the error line names it
    (e.g. ``"sweep dir"``, ``"--out"``). Use as a context manager, or ``acquire()`` / ``release()``."""

    def __init__(self, directory: str | Path, what: str = "directory", *, hint: str = "") -> None:
        self.dir = Path(directory).absolute()
        self.path = self.dir / LOCK_FILE
        self.what, self.hint = what, hint
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        key = str(self.dir)
        with _held_guard:
            if key in _held:
                raise Held(f"{self.what} {self.dir}: in use by this process already (pid {os.getpid()})")
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:  # read-only, permission denied, full: a runtime failure, in one line
                from pah.io import WriteError

                raise WriteError(e.errno, f"cannot write {self.path}: {e.strerror}") from None
            try:
                import fcntl

                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise Held(f"{self.what} {self.dir} is in use by {describe_holder(_read_info(self.path))}: "
                               f"one process at a time{self.hint}") from None
                print(f"warning: {self.dir}: this filesystem grants no file locks ({e.strerror}); nothing "
                      "keeps a second process from using it at the same time", file=sys.stderr, flush=True)
                return self
            # ours now: say who holds it (a reader that finds the lock taken reads this)
            data = (json.dumps(holder_info()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self._fd = fd
            _held.add(key)
        return self

    def check(self) -> None:
        """Raise ``Held`` if another process holds the lock now; takes nothing and creates nothing (a cheap
        early check, before slower ones: ``acquire`` still decides)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # no lock file (no one ever held it here), or not ours to open: acquire() will tell
            return
        try:
            import fcntl

            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise Held(f"{self.what} {self.dir} is in use by {describe_holder(_read_info(self.path))}: "
                           f"one process at a time{self.hint}") from None
        finally:
            os.close(fd)  # drops the probe's lock, if it got one

    def release(self) -> None:
        if self._fd is None:
            return
        with _held_guard:
            try:
                os.close(self._fd)  # drops the lock; the file stays (unlinking it would race a waiting opener)
            finally:
                self._fd = None
                _held.discard(str(self.dir))

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
