"""SIGINT and SIGTERM to a ``pah`` process outside the handlers of the work it runs.

``pah train`` (``pah.train_cli``) and ``pah sweep`` (``sweeps.interrupts``) take both signals
while they work; before, between and after them, a signal must still end the process with an
exit code of 128 + its number and an ``error:`` line, never by the default action (a SIGTERM
would end it as "killed", no line said, nothing unwound). When the CLI runs as the process's
main program (``pah.cli.main()`` with no ``argv``) it owns the signals:

- while a command runs: SIGTERM raises :class:`pah.errors.Interrupted`, as SIGINT raises
  ``KeyboardInterrupt``; either unwinds (locks and leases released) to the CLI's one ``error:``
  line;
- once the command's outcome is decided (its error line said, or its exit code known): a signal
  ends the process at once (``exit_at_once``), since the interpreter's own shutdown (Ray's and
  W&B's exit hooks) is all that is left;
- work that ended on a signal may leave its teardown to the process's end (``end_at_exit``): the
  CLI then ends the process with ``os._exit`` and the exit code it decided, and a reaper that
  waits for it to be gone does the rest. A sweep does this with its private Ray: Ray 2.60's
  ``ray.shutdown()`` can end the process on the spot with exit code 1 while trial actors that
  Tune just stopped are still dying (its core worker "Exiting because the Raylet IPC connection
  failed"; CI saw 1 instead of 143 after a SIGTERM, its line said).

Native code can change a handler behind Python's back: Ray 2.60's core worker resets SIGTERM (and
its other failure signals) to the default action in ``ray.shutdown()``, while ``signal.getsignal``
still names the Python handler. A SIGTERM after it killed the driver outright (exit -15, no line
said; seen in CI when a signal came as a finished sweep shut down). ``kept`` puts the Python
handlers back at the C level after such code.

Called in-process (tests, a notebook), nothing here is installed: the caller keeps its handlers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from pah.errors import Interrupted

__all__ = ["OWNED", "own", "raise_interrupted", "exit_at_once", "take", "kept", "end_at_exit", "end"]

#: the signals a ``pah`` process answers
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: True once the CLI runs as the process's main program (``own``)
OWNED = False

#: what ``end_at_exit`` left to the process's end: a reaper's shell command, or None
_LEFT: list[str] | None = None


def raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say on it
            pass


def exit_at_once(signum: int, frame: object) -> None:
    _flush()
    os._exit(128 + signum)


def take(handler: Callable[[int, object], None]) -> None:
    """Install ``handler`` for SIGINT and SIGTERM (main thread only: elsewhere Python cannot)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, handler)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Around native code that may reset signal handlers (``ray.init``, ``ray.shutdown``): afterwards,
    install again, at the C level, the Python handlers ``signal.getsignal`` reports for SIGINT and
    SIGTERM (main thread only; a handler Python did not install, None, is left as it is)."""
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                handler = signal.getsignal(s)
                if handler is not None:
                    signal.signal(s, handler)


def own() -> None:
    """The CLI runs as the process's main program: SIGTERM raises ``Interrupted`` from now on (SIGINT
    keeps Python's ``KeyboardInterrupt``, which ``pah train`` and the CLI catch)."""
    global OWNED
    OWNED = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupted)


def end_at_exit(reaper: str | None = None) -> bool:
    """Leave the rest of the teardown to the process's end (only when ``OWNED``; returns whether it
    was taken): the CLI ends the process with ``os._exit`` once the command returns (``end``), after
    starting ``reaper``, a shell command run in a session of its own once this process is gone; the
    kernel has by then ended the children that share this process's fate."""
    global _LEFT
    if not OWNED:
        return False
    _LEFT = (_LEFT or []) + ([reaper] if reaper else [])
    return True


def end(code: int) -> None:
    """If work left its teardown to the process's end (``end_at_exit``): start its reapers and end
    the process now with ``code``, the interpreter's exit hooks skipped; else return."""
    if _LEFT is None:
        return
    import subprocess

    pid = os.getpid()
    for reaper in _LEFT:
        try:
            subprocess.Popen(
                ["sh", "-c", f"while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {reaper}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )
        except OSError:  # no shell or no process left to start: what is left ends with its parent
            pass
    _flush()
    os._exit(code)
