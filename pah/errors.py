"""The one exception type that means "the user asked for something invalid".

The CLI turns it into exit code 2 and a single ``error: ...`` line on stderr, with no
traceback. Everything else that goes wrong at run time is exit code 1. Two more say how a
run ended without a traceback: ``Interrupted`` (a signal; exit 128 + its number, 130 for
SIGINT, 143 for SIGTERM) and ``Failed`` (the run ended and kept its results, but some of
its work failed; exit 1). Their message is the whole ``error:`` line, resume command included.
"""

from __future__ import annotations

import sys

__all__ = ["UserError", "Interrupted", "Failed", "one_line", "say"]


class UserError(Exception):
    """Bad input: an unknown name, a wrong type, a missing file. Exit code 2."""


class Interrupted(BaseException):
    """A signal stopped the run, its state saved for a resume. Exit code 128 + ``signum``.

    A ``BaseException``, as ``KeyboardInterrupt`` is: raised from a signal handler, it must
    unwind through code that catches ``Exception`` (Ray Tune's loop) without being swallowed.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Failed(Exception):
    """The run ended and saved what it could, but part of it failed (e.g. errored trials). Exit code 1."""


def one_line(message: str, limit: int = 1000) -> str:
    """A message as one line of at most ``limit`` characters (user input can hold newlines or be huge)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def say(e: BaseException) -> None:
    """Print ``e`` as the run's one ``error:`` line on stderr, once.

    The sweep driver says it before it shuts Ray down (``sweeps.driver``: Ray's shutdown can end the
    process on the spot); the CLI's own handler then finds it said and prints nothing more.
    """
    if getattr(e, "said", False):
        return
    print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
    e.said = True  # type: ignore[attr-defined]
