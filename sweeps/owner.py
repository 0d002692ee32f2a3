"""One driver per sweep: the lock (a directory) or the lease (a bucket) that ``run_sweep`` holds.

Taken before the driver reads or writes anything of the sweep, released on every way out:

- a sweep dir on a local or shared filesystem: ``pah.lock.DirLock`` on ``SWEEP/.pah-lock``, a
  POSIX lock the kernel drops when the driver's process ends (see pah/lock.py for NFS and Lustre);
- a sweep on object storage (``s3://``, ``gs://``): a **lease**, the object ``URI/.pah-lease``
  naming its holder (host, pid, SLURM job), which the holder's heartbeat thread rewrites every
  ``PAH_LEASE_HEARTBEAT_S`` seconds (default 30). A lease not renewed for ``MISSED_BEATS`` (3)
  heartbeats is **stale** (its holder crashed, or lost its network) and the next driver takes it
  over with a note; so is, at once, a lease whose holder is a dead process on this same host, or
  an earlier run of this same SLURM job (a requeued job, SLURM_RESTART_COUNT higher: the earlier
  run is over; two drivers within one allocation still exclude each other). The driver
  deletes its lease when it ends. A holder that finds, at a heartbeat, that another driver took
  its lease over (it was cut off for longer than the timeout) stops at once with SIGTERM, so that
  two drivers never run on one sweep. Object stores offer no atomic create in pyarrow: two
  drivers started within the same second are told apart by writing, waiting ``SETTLE_S`` and
  reading back, where the last writer wins. Clocks of the hosts must agree to within the
  timeout (NTP).

A second driver gets ``pah.lock.Held`` (exit 2, one ``error:`` line naming the holder) before
it has written a file or started Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pah import storage as storage_mod
from pah.lock import LOCK_FILE, DirLock, Held, describe_holder, holder_info
from pah.retry import DiskWatch

__all__ = ["LEASE", "HEARTBEAT_ENV", "MISSED_BEATS", "Lease", "SweepLock", "sweep_owner", "heartbeat_s"]

LEASE = ".pah-lease"
HEARTBEAT_ENV = "PAH_LEASE_HEARTBEAT_S"
MISSED_BEATS = 3
SETTLE_S = 1.0
GONE = "that process is gone"
_HINT = "; wait for it to end (or stop it), then `pah sweep --resume` continues the sweep"


def heartbeat_s() -> float:
    try:
        return max(0.2, float(os.environ.get(HEARTBEAT_ENV, "30")))
    except ValueError:
        return 30.0


def _pid_alive(pid: int, started: int | None = None) -> bool:
    """``pid`` runs on this host, and is the process that started at ``started`` (see ``_start_ticks``):
    a zombie (killed, not yet reaped by its parent) or a pid reused since is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (macOS): the pid alone
    return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)


def _start_ticks() -> int | None:
    """This process's start time, in clock ticks since boot (Linux /proc); with the pid, who we are."""
    try:
        return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Lease:
    """The lease on the sweep at ``uri``: ``acquire()`` (or Held), a heartbeat thread, ``release()``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, path = storage_mod.resolve(self.uri)
        self.path = f"{path.rstrip('/')}/{LEASE}"
        self.token = uuid.uuid4().hex
        self.every = heartbeat_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info = {**holder_info(), "started": _start_ticks(), "token": self.token, "heartbeat_s": self.every}

    # -- the object
    def _read(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                info = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a crashed holder, or not ours: no one holds it
            return None
        return info if isinstance(info, dict) else None

    def _write(self) -> None:
        self._info["renewed"] = time.time()
        with self.fs.open_output_stream(self.path) as f:
            f.write((json.dumps(self._info) + "\n").encode())

    def stale_reason(self, info: dict[str, Any]) -> str | None:
        """Why ``info``'s holder no longer holds the lease, or None when it does."""
        age = time.time() - float(info.get("renewed", 0))
        beat = float(info.get("heartbeat_s") or self.every)
        if age > MISSED_BEATS * beat:
            return f"no heartbeat for {age:.0f} s, {MISSED_BEATS} missed"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                and info["pid"] != os.getpid() and not _pid_alive(info["pid"], info.get("started")):
            return GONE
        me = holder_info()
        if me["slurm_job"] and info.get("slurm_job") == me["slurm_job"] \
                and int(info.get("slurm_restart") or 0) < me["slurm_restart"]:
            return f"an earlier run of this SLURM job {me['slurm_job']}, requeued since"
        return None

    # -- taking it
    def acquire(self) -> Lease:
        try:
            current = self._read()
            if current and current.get("token") != self.token:
                why = self.stale_reason(current)
                if why is None:
                    age = max(0.0, time.time() - float(current.get("renewed", 0)))
                    lapse = MISSED_BEATS * float(current.get("heartbeat_s") or self.every) - age
                    # the holder may be a driver whose node is gone (a lost head): say when a retry takes over
                    raise Held(f"sweep {self.uri} is in use by {describe_holder(current)}: one driver at a time "
                               f"(its lease was renewed {age:.0f} s ago; should that driver be gone with its "
                               f"node, the lease lapses in {max(1.0, lapse):.0f} s and a retry then takes it over)"
                               + _HINT)
                if why != GONE:  # a dead driver of this host (a crash, resumed) is taken over as its lock would be
                    print(f"note: taking over the lease on {self.uri} from {describe_holder(current)} ({why})",
                          file=sys.stderr, flush=True)
            self._write()
            time.sleep(min(SETTLE_S, self.every / 4))
            now = self._read()
        except Held:
            raise
        except OSError as e:
            from pah.errors import UserError

            raise UserError(f"sweep {self.uri}: cannot take its lease ({storage_mod._explain(e, self.uri)})") from None
        if now is None or now.get("token") != self.token:  # another driver wrote after us: it has it
            raise Held(f"sweep {self.uri} is in use by {describe_holder(now)}: one driver at a time" + _HINT)
        self._thread = threading.Thread(target=self._beat, name="pah-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        from pah.retry import Outage

        outage = Outage(f"storage {self.uri}", what="renewing the sweep's lease")
        while not self._stop.wait(self.every):
            try:
                current = self._read()
                if current is not None and current.get("token") != self.token:
                    print(f"error: another driver took over the lease on {self.uri} ({describe_holder(current)}): "
                          "this driver stops now", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                self._write()
                outage.ok()
            except OSError as e:
                outage.failed(e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with contextlib.suppress(OSError):
            current = self._read()
            if current is not None and current.get("token") == self.token:
                self.fs.delete_file(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class SweepLock(DirLock):
    """The sweep dir's lock, and while it is held a ``pah.retry.DiskWatch`` on its disk: a full disk is said
    on the driver's output every 30 s while it lasts (the trials wait it out, their lines on that disk)."""

    _watch: DiskWatch | None = None

    def acquire(self) -> SweepLock:
        super().acquire()
        self._watch = DiskWatch(self.dir, say=lambda line: print(line, flush=True)).start()
        return self

    def release(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        super().release()


def _new_local_target(d: Path) -> bool:
    """``d`` is a sweep dir, or can become one (missing or empty): the dir a lock may be taken in.
    Anything else (a file, a dir of other things) is refused by the driver itself, with its message."""
    from sweeps.phases import STATE

    if not d.exists():
        return True
    if not d.is_dir():
        return False
    return (d / STATE).is_file() or not [p for p in d.iterdir() if p.name != LOCK_FILE]


def sweep_owner(spec: Any, overrides: Sequence[str], storage: str | Path | None, name: str | None,
                resume: str | Path | None) -> tuple[Any, Sequence[str], str | None, contextlib.AbstractContextManager]:
    """``(spec, overrides, name, owner)`` for ``run_sweep``: ``owner`` is the lock or lease of the sweep dir those
    arguments name (a no-op where the driver refuses them anyway). Without ``name``, the spec is loaded here and
    its default name (``SPEC-YYYYmmdd-HHMMSS``) fixed here, so that the lock guards the dir the driver opens."""
    from sweeps.phases import DEFAULT_STORAGE
    from sweeps.spec import Spec, load_spec

    none = contextlib.nullcontext()
    if resume is not None:
        if storage_mod.is_uri(resume):
            return spec, overrides, name, Lease(str(resume))
        d = Path(resume).absolute()
        from sweeps.phases import STATE

        return spec, overrides, name, SweepLock(d, "sweep", hint=_HINT) if (d / STATE).is_file() else none
    if name is not None and (not name or "/" in name or name in (".", "..")):
        return spec, overrides, name, none
    if name is None:  # the default name is the spec's: load it once, here
        if not isinstance(spec, Spec):
            spec, overrides = load_spec(spec or "quickstart", list(overrides)), ()
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if storage_mod.is_uri(storage):
        return spec, overrides, name, Lease(storage_mod.join(str(storage), name))
    d = ((Path(storage) if storage is not None else DEFAULT_STORAGE) / name).absolute()
    return spec, overrides, name, SweepLock(d, "sweep", hint=_HINT) if _new_local_target(d) else none
