"""Storage faults that pass: retried with backoff, reported while they last, given up only after a deadline.

A bucket that refuses connections for a minute, a full disk that someone frees, an NFS server that
restarts: the write that failed is tried again, 1 s later, then 2, 4, ... up to ``PAH_STORAGE_BACKOFF_S``
(default 30 s) apart, for up to ``PAH_STORAGE_RETRY_S`` seconds in all (default 900: 15 min). While it
lasts, one line every ``PAH_STORAGE_REPORT_S`` seconds (default 30) says what and for how long::

    warning: storage s3://bucket/sweeps/qs unreachable for 30 s (... Connection refused), retrying (up to 900 s)
    warning: disk of /data/runs/x full for 60 s (No space left on device), retrying (up to 900 s)

and one more when it is back. Past the deadline the last error is raised, its message saying how long
it was tried. Errors that would not pass by waiting (permission denied, a read-only filesystem, a
missing bucket, bad credentials) are raised at once.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RETRY_ENV", "BACKOFF_ENV", "REPORT_ENV", "FULL_BELOW_BYTES", "transient", "gave_up", "Outage", "retrying",
           "deadline_s", "DiskWatch"]

RETRY_ENV = "PAH_STORAGE_RETRY_S"
BACKOFF_ENV = "PAH_STORAGE_BACKOFF_S"
REPORT_ENV = "PAH_STORAGE_REPORT_S"

T = TypeVar("T")

#: a disk (or quota) that is full: frees up when someone deletes something
FULL = (errno.ENOSPC, errno.EDQUOT)
#: the network or the server: passes when it comes back
_NET_ERRNOS = (errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
               errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ESTALE, errno.EIO)
#: how pyarrow (AWS SDK, GCS client) words a failure to reach the server, or a server busy for now
_NET_WORDS = ("curlcode", "could not connect", "couldn't connect", "connection refused", "connection reset",
              "timed out", "timeout", "network", "unable to connect", "connect to server", "broken pipe",
              "service unavailable", "slowdown", "slow down", "internalerror", "internal error", "503", "500 ",
              "502", "504", "throttl", "temporarily", "transport", "request failed")
#: never transient, whatever else the message says
_FINAL_WORDS = ("access denied", "access_denied", "accessdenied", "forbidden", "nosuchbucket", "no such bucket",
                "invalidaccesskeyid", "signaturedoesnotmatch", "read-only", "permission denied")


def _env_s(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def deadline_s() -> float:
    return _env_s(RETRY_ENV, 900.0)


def transient(e: BaseException) -> str | None:
    """'full' or 'unreachable' for an error that waiting may cure, else None."""
    if not isinstance(e, OSError) or gave_up(e):  # retried already, to its deadline: not again by an outer retry
        return None
    if e.errno in FULL:
        return "full"
    text = " ".join(str(e).lower().split())
    if any(w in text for w in _FINAL_WORDS) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
        return None
    if "no space left" in text or "quota exceeded" in text:
        return "full"
    if e.errno in _NET_ERRNOS or isinstance(e, (ConnectionError, TimeoutError)) or any(w in text for w in _NET_WORDS):
        return "unreachable"
    return None


def gave_up(e: BaseException) -> str | None:
    """'full' or 'unreachable' for the error of a storage outage that outlasted ``retrying``'s deadline."""
    return getattr(e, "pah_storage", None)


def _cause(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:195] + " ..."


class Outage:
    """The reporter of one storage's trouble: ``failed(e)`` on each failure (a line every ``REPORT_ENV``
    seconds while it lasts), ``ok()`` on a success (a line if any was printed). ``name``: 'storage URI',
    'disk of PATH'. ``say``: where lines go (stderr by default)."""

    def __init__(self, name: str, *, what: str = "", say: Callable[[str], None] | None = None) -> None:
        self.name, self.what = name, what
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.since: float | None = None
        self._last_said: float | None = None
        self.kind = "unreachable"

    @property
    def seconds(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def failed(self, e: BaseException) -> None:
        now = time.monotonic()
        self.kind = transient(e) or self.kind
        if self.since is None:
            self.since = now
        every = _env_s(REPORT_ENV, 30.0)
        if self._last_said is None or now - self._last_said >= every:
            self._last_said = now
            doing = f" {self.what}" if self.what else ""
            self.say(f"warning: {self.name} {self.kind} for {self.seconds:.0f} s{doing} ({_cause(e)}), "
                     f"retrying (up to {deadline_s():.0f} s)")

    def ok(self) -> None:
        if self._last_said is not None:
            self.say(f"note: {self.name} is back after {self.seconds:.0f} s")
        self.since = self._last_said = None


def _watched(fn: Callable[[], T], outage: Outage) -> T:
    """``fn()``; while it hangs (a storage that accepts connections and never answers), a line every
    ``REPORT_ENV`` seconds says so."""
    every = max(0.5, _env_s(REPORT_ENV, 30.0))
    done = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:
        while not done.wait(every):
            doing = f" {outage.what}" if outage.what else ""
            outage.say(f"warning: {outage.name} has not answered for {time.monotonic() - t0:.0f} s{doing}, waiting")

    threading.Thread(target=watch, name="pah-storage-watch", daemon=True).start()
    try:
        return fn()
    finally:
        done.set()


def retrying(fn: Callable[[], T], name: str, *, what: str = "", outage: Outage | None = None,
             say: Callable[[str], None] | None = None) -> T:
    """``fn()``, called again with backoff while it fails with a transient storage error (see ``transient``),
    for up to ``PAH_STORAGE_RETRY_S`` seconds; then the last error is raised, saying for how long it was tried."""
    outage = outage or Outage(name, what=what, say=say)
    delay, cap, limit = 1.0, max(0.1, _env_s(BACKOFF_ENV, 30.0)), deadline_s()
    while True:
        try:
            result = _watched(fn, outage)
        except OSError as e:
            kind = transient(e)
            if kind is None or limit <= 0:
                raise
            if outage.seconds >= limit:
                note = f" ({name} {kind} for {outage.seconds:.0f} s, retried with backoff)"
                if isinstance(e.strerror, str):  # what str(e) shows for an OSError with an errno
                    e.strerror += note
                elif e.args and isinstance(e.args[-1], str):
                    e.args = (*e.args[:-1], e.args[-1] + note)
                e.pah_storage = kind
                raise
            outage.failed(e)
            time.sleep(min(delay, cap, max(0.1, limit - outage.seconds)))
            delay *= 2
            continue
        outage.ok()
        return result


#: a disk with less room than this counts as full (a task checkpoint of a small model is a few MiB)
FULL_BELOW_BYTES = 64 << 20


class DiskWatch:
    """A thread that says, every ``REPORT_ENV`` seconds while it lasts, that the disk of ``path`` is full
    (less than ``FULL_BELOW_BYTES`` free), and when it has room again: the sweep driver's word for what
    its trials (whose own lines go to their logs, on that full disk) are waiting for."""

    def __init__(self, path: str | os.PathLike, *, say: Callable[[str], None] | None = None) -> None:
        self.path = os.fspath(path)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _run(self) -> None:
        since: float | None = None
        every = max(0.5, _env_s(REPORT_ENV, 30.0))
        while not self._stop.wait(every):
            try:
                free = self.free_bytes()
            except OSError:
                continue
            if free < FULL_BELOW_BYTES:
                since = since if since is not None else time.monotonic()
                self.say(f"warning: disk of {self.path} full or nearly ({free >> 10} KiB free) for "
                         f"{time.monotonic() - since:.0f} s: writes that fail wait for room, retrying (up to "
                         f"{deadline_s():.0f} s); free some space")
            elif since is not None:
                self.say(f"note: disk of {self.path} has room again ({free >> 20} MiB free) after "
                         f"{time.monotonic() - since:.0f} s")
                since = None

    def start(self) -> DiskWatch:
        self._thread = threading.Thread(target=self._run, name="pah-disk-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
