"""What a sweep spec is: its dataclasses, its limits, and the syntax of a search space.

Below both the loader (sweeps/spec.py: ``load_spec``, which hands a spec with ``methods`` to
sweeps/study.py) and the study, which builds its methods' entries from these, so neither imports
the other's caller. Plain data and checks: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["Spec", "Dist", "Scheduler", "Resources", "Confirm", "Wandb", "MethodEntry", "Study", "override",
           "SEARCHERS", "DISTRIBUTIONS", "METRICS", "SPEC_DIR"]

SPEC_DIR = Path(__file__).parent / "specs"
SEARCHERS = ("optuna-tpe", "optuna-multi", "random", "grid")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
#: what a trial reports after every task (and what a spec may optimise)
METRICS = ("avg_acc", "forgetting", "bwt", "val_avg_acc", "val_forgetting", "val_bwt")
#: sizes beyond any real sweep: refused where they enter rather than queued for ever
MAX_SAMPLES = 100_000
MAX_CONCURRENT = 10_000
MAX_SEEDS = 1_000
MAX_RESOURCES = {"cpus": 1024, "gpus": 64}


@dataclass(frozen=True)
class Dist:
    """One search dimension: ``{uniform|loguniform: [lo, hi]}``, ``{int: [lo, hi]}`` (inclusive), ``{choice: [...]}``."""

    kind: str
    args: tuple[Any, ...]

    def probe_values(self) -> list[Any]:
        """Values that must each make a valid config (both ends of a range, every choice)."""
        return list(self.args)

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.args)}


@dataclass(frozen=True)
class Scheduler:
    name: str = "none"  # "asha" | "none"
    grace_period: int = 1  # tasks a trial completes before ASHA may stop it
    reduction_factor: int = 2


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    #: trials trained together in one process (sweeps/packing.py), taking turns step by step;
    #: ``gpus`` is then what each pack of trials gets. 1: every trial in its own process
    pack: int = 1


@dataclass(frozen=True)
class Confirm:
    top_k: int = 0  # 0: no confirm phase
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Wandb:
    enabled: bool = True
    project: str | None = None  # default: $WANDB_PROJECT, then "pah"
    mode: str | None = None  # default: $WANDB_MODE, then "offline"


@dataclass(frozen=True)
class MethodEntry:
    """One method of a study (``spec.methods``): its whole search space and its fixed settings,
    both as full config keys (``method.ewc_lambda``, ``train.lr``); see sweeps/study.py."""

    name: str
    space: dict[str, Dist] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"space": {k: v.to_dict() for k, v in self.space.items()}, "set": dict(self.set)}


@dataclass(frozen=True)
class Study:
    #: the method the table's Welch p-values compare against (default: pah if it is in the study, else the first)
    reference: str | None = None


@dataclass(frozen=True)
class Spec:
    name: str
    base: str
    set: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Dist] = field(default_factory=dict)
    searcher: str = "optuna-tpe"
    metric: str | tuple[str, ...] = "val_avg_acc"
    mode: str | tuple[str, ...] = "max"
    num_samples: int = 8
    max_concurrent: int = 2
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    confirm: Confirm = field(default_factory=Confirm)
    max_failures: int = 2
    wandb: Wandb = field(default_factory=Wandb)
    description: str = ""
    #: a study (sweeps/study.py): every method searched with the same budget; empty for a plain sweep
    methods: tuple[MethodEntry, ...] = ()
    study: Study = field(default_factory=Study)

    # ---- the trial configs this spec makes

    def config_overrides(self, params: dict[str, Any] | None = None, seed: int | None = None) -> list[str]:
        """``--set`` strings for the base config: the spec's ``set``, a trial's params, its seed
        (in a study, the ``set`` of the method that the params name comes in between)."""
        items = dict(self.set)
        if self.methods and (params or {}).get("method.name") is not None:
            items.update(self.method(params["method.name"]).set)
        items.update(params or {})
        if seed is not None:
            items["seed"] = seed
        return [override(k, v) for k, v in items.items()]

    def trial_config(self, params: dict[str, Any] | None = None, seed: int | None = None):
        from pah.config import load_config

        return load_config(self.base, self.config_overrides(params, seed))

    def method(self, name: str) -> MethodEntry:
        """The study's entry of method ``name``."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def search_trials(self) -> int:
        """Trials of the search phase: ``num_samples``, for each method of a study."""
        return self.num_samples * max(1, len(self.methods))

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    @property
    def modes(self) -> tuple[str, ...]:
        return (self.mode,) if isinstance(self.mode, str) else tuple(self.mode)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["space"] = {k: v.to_dict() for k, v in self.space.items()}
        if self.methods:  # a mapping, as a study spec may give it; a plain sweep's dict is as it was
            d["methods"] = {m.name: m.to_dict() for m in self.methods}
        else:
            del d["methods"], d["study"]
        d["confirm"]["seeds"] = list(self.confirm.seeds)
        for k in ("metric", "mode"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d


def override(key: str, value: Any) -> str:
    """One ``KEY=VALUE`` string that :func:`pah.config.parse_overrides` reads back as ``value``."""
    return f"{key}={json.dumps(value)}"


def _space(raw: Any, searcher: str) -> dict[str, Dist]:
    if not isinstance(raw, dict):
        raise UserError(f"spec.space: expected a mapping of config keys to distributions, got {raw!r}")
    out: dict[str, Dist] = {}
    for key, d in _flatten_space(raw).items():
        where = f"spec.space.{key}"
        if not isinstance(d, dict) or len(d) != 1:
            raise UserError(f"{where}: expected one of {{uniform|loguniform: [lo, hi]}}, {{int: [lo, hi]}}, {{choice: [...]}}; got {d!r}")
        kind, args = next(iter(d.items()))
        if kind not in DISTRIBUTIONS:
            raise UserError(f"{where}: unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}")
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
        if kind == "choice":
            if any(isinstance(a, (dict, list)) for a in args):
                raise UserError(f"{where}.choice: choices must be scalars, got {args!r}")
        else:
            if len(args) != 2:
                raise UserError(f"{where}.{kind}: expected [lo, hi], got {args!r}")
            if kind == "int":
                if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                    raise UserError(f"{where}.int: bounds must be integers, got {args!r}")
            else:
                try:
                    args = [float(a) for a in args]
                except (TypeError, ValueError):
                    raise UserError(f"{where}.{kind}: bounds must be numbers, got {args!r}") from None
                if not all(math.isfinite(a) for a in args):
                    raise UserError(f"{where}.{kind}: bounds must be finite, got {args!r}")
            lo, hi = args
            if not lo < hi:
                raise UserError(f"{where}.{kind}: lower bound {lo!r} must be below upper bound {hi!r}")
            if kind == "loguniform" and lo <= 0:
                raise UserError(f"{where}.loguniform: bounds must be > 0, got {args!r}")
            if searcher == "grid":
                raise UserError(f"{where}: the grid searcher takes only 'choice' dimensions, not {kind!r}")
        out[key] = Dist(kind, tuple(args))
    return out


def _flatten_space(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Accept nested sections (``train: {lr: {loguniform: ...}}``) as well as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) >= 1 and not (set(v) & set(DISTRIBUTIONS)) and all(isinstance(x, dict) for x in v.values()):
            out.update(_flatten_space(v, key + "."))
        else:
            out[key] = v
    return out


def _check_configs(spec: Spec) -> None:
    """The base and its overrides make a valid config, and so does every probed space value."""
    from pah.config import load_config

    try:
        load_config(spec.base, spec.config_overrides())
    except UserError as e:
        raise UserError(f"spec.base/set: {e}") from None
    for key, dist in spec.space.items():
        for value in dist.probe_values():
            try:
                load_config(spec.base, spec.config_overrides({key: value}))
            except UserError as e:
                raise UserError(f"spec.space.{key}: {value!r} does not make a valid config: {e}") from None
