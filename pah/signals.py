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
  W&B's exit hooks) is all that is left.

Called in-process (tests, a notebook), nothing here is installed: the caller keeps its handlers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from pah.errors import Interrupted

__all__ = ["OWNED", "own", "raise_interrupted", "exit_at_once", "take"]

#: the signals a ``pah`` process answers
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: True once the CLI runs as the process's main program (``own``)
OWNED = False


def raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def exit_at_once(signum: int, frame: object) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say on it
            pass
    os._exit(128 + signum)


def take(handler: Callable[[int, object], None]) -> None:
    """Install ``handler`` for SIGINT and SIGTERM (main thread only: elsewhere Python cannot)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, handler)


def own() -> None:
    """The CLI runs as the process's main program: SIGTERM raises ``Interrupted`` from now on (SIGINT
    keeps Python's ``KeyboardInterrupt``, which ``pah train`` and the CLI catch)."""
    global OWNED
    OWNED = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupted)
