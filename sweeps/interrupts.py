"""Ctrl-C and SIGTERM to a sweep driver: the first stops the sweep gracefully, a second at once.

The first SIGINT, SIGTERM or SIGUSR1 asks Ray Tune for its own graceful stop: Tune starts no
new trial, stops the running ones where they are (each keeps its last task checkpoint) and
saves its experiment state one last time; ``Tuner.fit()`` then *returns*, as if the phase had
ended, and the driver must not take that for the end of the phase (see
``sweeps.driver._run_phase``, which counts the trials that really ended). The driver then
raises :class:`pah.errors.Interrupted`: exit 130 (SIGINT) or 143 (SIGTERM), with one last
``error:`` line naming ``pah sweep --resume ...``.

A second signal raises ``KeyboardInterrupt`` at once, wherever the driver is (Tune's loop, a
wait in Ray's core worker, which passes on no other exception from a signal handler), and the
driver turns it into ``Interrupted`` (``abort_error``). Once the driver has stopped (Ray shut
down), a signal ends the process at once through ``os._exit`` when the CLI owns the process
(``pah.signals``), its last line still naming the resume command. Either way,
whatever Tune saved last is what ``--resume`` starts from (``sweeps.snapshot`` keeps a good
copy of it), and every trial keeps its last task checkpoint.

How Tune is asked (Ray 2.60, ``ray/tune/tune.py``): ``tune.run`` installs a handler that sets
its "interrupted" event on SIGINT (unless ``TUNE_DISABLE_SIGINT_HANDLER``) and always on
SIGUSR1, and never puts the previous handlers back unless a signal came. We keep SIGINT and
SIGTERM ourselves (``TUNE_DISABLE_SIGINT_HANDLER=1``: we know of every signal) and pass the
first on as SIGUSR1, to Tune's handler once ``fit()`` has installed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from pah.errors import Interrupted

__all__ = ["Interrupts", "SIGNALS"]

#: the signals that stop a sweep (SIGUSR1 is Ray Tune's own "stop gracefully")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupts:
    """Catches :data:`SIGNALS` while the driver runs (main thread only; elsewhere it does nothing).

    ``resume`` is the command that continues the sweep, named in every message.
    """

    def __init__(self, resume: str) -> None:
        self.resume = resume
        self.signum: int | None = None
        self.aborted = False  # a second signal came
        self._saved: dict[int, object] = {}
        self._fitting = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._saved = {s: signal.getsignal(s) for s in SIGNALS}
            self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        from pah import signals

        for s, h in self._saved.items():
            if self.signum is not None and signals.OWNED:  # stopping: a signal from now on ends the process
                signal.signal(s, self._at_once)
            else:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._saved = {}

    def _at_once(self, signum: int, frame: object) -> None:
        """A signal after the sweep stopped (Ray shut down, every trial checkpointed): the process is on
        its way out, its error line said or about to be; end it now, saying the line once more (last)."""
        from pah import signals

        self.signum, self.aborted = signum, True
        print(f"error: {self.message('again while it ended: ended at once; every trial keeps its last task checkpoint')}",
              file=sys.stderr, flush=True)
        signals.exit_at_once(signum, frame)

    def install(self) -> None:
        """(Re)take the signals: ``ray.init`` sets its own SIGTERM handler, and Tune leaves its SIGUSR1 one."""
        for s in self._saved:
            signal.signal(s, self._handle)

    def message(self, what: str = "") -> str:
        """``interrupted by SIGINT (...); resume with: pah sweep --resume DIR``."""
        name = signal.Signals(self.signum).name if self.signum else "a signal"
        return f"interrupted by {name}{f' ({what})' if what else ''}; resume with: {self.resume}"

    def interrupted(self, what: str = "") -> Interrupted:
        """The exception that ends the driver after a graceful stop."""
        return Interrupted(self.message(what), self.signum or signal.SIGINT)

    def abort_error(self) -> Interrupted:
        """What the driver raises when a second signal ended it at once."""
        return Interrupted(self.message("a second time: stopped at once; every trial keeps its last task checkpoint"),
                           self.signum or signal.SIGINT)

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal came (between phases, before a phase starts)."""
        if self.signum is not None:
            raise Interrupted(self.message("before the next phase started"), self.signum)

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Around ``Tuner.fit()``: a first signal becomes Tune's graceful stop."""
        self.install()  # a stale SIGUSR1 handler of an earlier fit() must not take the signal
        self.check()
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            if self._saved:
                self.install()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second: at once
            self.signum, self.aborted = signum, True
            # a KeyboardInterrupt, the one exception Ray's own code (a wait in its core worker) passes on
            # from a signal handler; the driver turns it into ``self.abort_error()``
            raise KeyboardInterrupt
        self.signum = signum
        print(f"{signal.Signals(signum).name}: stopping the sweep: no new trials; the running ones keep their "
              "last task checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)
        if self._fitting:
            self._stop_tune(frame)

    def _stop_tune(self, frame: object) -> None:
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if callable(tune_handler) and tune_handler != self._handle:
            tune_handler(signal.SIGUSR1, frame)  # sets Tune's event (and puts our SIGINT handler back)
            return

        def later() -> None:  # fit() has not installed its handler yet: pass the signal on once it has
            while self._fitting:
                if signal.getsignal(signal.SIGUSR1) not in (self._handle, None, signal.SIG_DFL, signal.SIG_IGN):
                    os.kill(os.getpid(), signal.SIGUSR1)
                    return
                time.sleep(0.05)

        threading.Thread(target=later, name="pah-interrupt", daemon=True).start()
