"""The configuration layer's declarations: every method's hyperparameters, every benchmark's
shape and every backbone's name, as plain data.

Nothing here imports torch or numpy. Validating a config or a sweep spec (``pah.config``,
``sweeps.spec``) needs only this package; the implementations (``pah.methods``, ``pah.data``,
``pah.models``) register against the same names and are imported when a trial is built.
Adding a method: one ``Params`` module here, registered in :data:`PARAMS`, and one
implementation file in ``pah/methods`` (docs/architecture.md).
"""

from __future__ import annotations

from pah.conf import agem, derpp, er, ewc, hnet, lwf, pah, replay, si  # noqa: F401  (registration)
from pah.conf.base import PARAMS, MethodParams, check
from pah.conf.models import BACKBONE_NAMES
from pah.conf.shapes import SHAPES, Shape, resolved_shape

__all__ = ["PARAMS", "MethodParams", "check", "BACKBONE_NAMES", "SHAPES", "Shape", "resolved_shape"]
