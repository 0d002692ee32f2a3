"""The one exception type that means "the user asked for something invalid".

The CLI turns it into exit code 2 and a single ``error: ...`` line on stderr, with no
traceback. Everything else that goes wrong at run time is exit code 1.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input: an unknown name, a wrong type, a missing file. Exit code 2."""
