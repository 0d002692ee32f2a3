"""The base of every method's hyperparameters, the range check they share, and the registry of
method names: what validating a ``method:`` section needs, and nothing that trains.

This module and the rest of :mod:`pah.conf` import neither torch nor numpy: a sweep driver,
``pah sweep --help`` and ``pah analyze`` load them without paying for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pah.errors import UserError
from pah.registry import Registry

__all__ = ["MethodParams", "PARAMS", "check"]


def check(ok: bool, key: str, value: object, what: str) -> None:
    """A value out of its range is a UserError naming the key: ``key: value is out of range (must be what)``."""
    if not ok:
        raise UserError(f"{key}: {value!r} is out of range (must be {what})")


@dataclass(frozen=True)
class MethodParams:
    """Base of every method's hyperparameters; subclasses add their own fields."""

    name: str = "pah"

    #: the method's default search space: keys relative to ``method.``, values in a sweep spec's
    #: space syntax (sweeps/spec.py), e.g. ``{"lambda_kd": {"loguniform": [0.1, 10.0]}}``;
    #: empty for methods without hyperparameters of their own
    SPACE: ClassVar[dict[str, dict]] = {}


#: method name -> its Params dataclass. The implementation registered under the same name in
#: ``pah.methods.METHODS`` declares ``Params`` = this class (tests/test_layers.py checks both agree).
PARAMS: Registry[type[MethodParams]] = Registry("method")

# methods without hyperparameters of their own
PARAMS.register("finetune")(MethodParams)
PARAMS.register("joint")(MethodParams)
