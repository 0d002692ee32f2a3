"""A sweep spec: YAML data, validated where it enters, like a trial config.

A spec names a base trial config (a preset or a YAML path) plus overrides, a search
space over any config key, how to search it (Optuna TPE, Optuna multi-objective,
random, grid), an optional ASHA scheduler over *tasks completed*, resources per
trial, and a ``confirm`` phase re-running the top-K configs over several seeds.
Every problem raises :class:`~pah.errors.UserError` naming the field.

``--set KEY=VALUE`` on ``pah sweep`` sets a spec field when KEY names one
(``num_samples=2``, ``confirm.top_k=1``, ``scheduler.name=none``) and otherwise
overrides the base trial config (``train.epochs_per_task=1``, ``seed=3``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pah.config import LIMITS, flatten, read_yaml_file
from pah.errors import UserError
from sweeps.schema import (
    MAX_CONCURRENT,
    MAX_RESOURCES,
    MAX_SAMPLES,
    MAX_SEEDS,
    METRICS,
    SEARCHERS,
    SPEC_DIR,
    Confirm,
    Dist,
    MethodEntry,
    Resources,
    Scheduler,
    Spec,
    Study,
    Wandb,
    _check_configs,
    _space,
    override,
)

__all__ = [
    "Spec",
    "Dist",
    "Scheduler",
    "Resources",
    "Confirm",
    "Wandb",
    "MethodEntry",
    "Study",
    "load_spec",
    "spec_names",
    "spec_from_dict",
    "override",
    "SEARCHERS",
    "METRICS",
]

# --------------------------------------------------------------------------- loading


def spec_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def _read(source: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(source)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = SPEC_DIR / f"{source}.yaml"
        if not path.is_file():
            raise UserError(f"spec {str(source)!r} is neither a YAML file nor a shipped spec; shipped: {', '.join(spec_names())}")
    return path.stem, read_yaml_file(path, what="spec file")


_FIELDS = {f.name for f in dataclasses.fields(Spec)} | {"overrides"}
_SECTIONS = {"scheduler": Scheduler, "resources": Resources, "confirm": Confirm, "wandb": Wandb, "study": Study}


def _apply_sets(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Spec fields from ``--set`` go into the spec; every other key overrides the base config."""
    from pah.config import parse_overrides

    raw = dict(raw)
    given = raw.get("set", raw.get("overrides")) or {}
    config_sets = dict(given) if isinstance(given, dict) else None
    for item in overrides:
        key = item.partition("=")[0].strip()
        head = key.split(".")[0]
        if head in _FIELDS and head not in ("set", "overrides", "space"):
            parsed = parse_overrides([item])
            if head in _SECTIONS and isinstance(parsed[head], dict):
                section = raw.get(head)
                if isinstance(section, str):
                    section = {"name": section}
                elif section is False:
                    section = {"enabled": False}
                raw[head] = {**(section if isinstance(section, dict) else {}), **parsed[head]}
            else:
                raw[head] = parsed[head]
        elif config_sets is not None:  # else spec_from_dict reports the bad 'set'
            config_sets[key] = parse_overrides([f"value={item.partition('=')[2]}"])["value"]
    if config_sets is not None and overrides:
        raw.pop("overrides", None)
        raw["set"] = config_sets
    return raw


def load_spec(source: str | Path = "quickstart", overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read a shipped spec or a YAML file, apply ``--set`` items, validate everything."""
    name, raw = _read(source)
    return spec_from_dict(_apply_sets(raw, overrides), name=name)


def spec_from_dict(raw: dict[str, Any], *, name: str = "sweep", check_configs: bool = True) -> Spec:
    raw = dict(raw)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise UserError(f"spec: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_FIELDS - {'overrides'}))}")
    name = str(raw.pop("name", name))
    if "overrides" in raw:
        if "set" in raw:
            raise UserError("spec: give either 'set' or 'overrides', not both")
        raw["set"] = raw.pop("overrides")
    base = raw.pop("base", None)
    if not isinstance(base, str) or not base:
        raise UserError("spec.base: required; a trial preset name (e.g. split-digits-pah) or a config YAML path")
    sets = raw.pop("set", None) or {}
    if not isinstance(sets, dict):
        raise UserError(f"spec.set: expected a mapping of config keys to values, got {sets!r}")
    sets = flatten(sets)

    searcher = raw.pop("searcher", "optuna-tpe")
    if searcher not in SEARCHERS:
        raise UserError(f"spec.searcher: {searcher!r} is not one of {', '.join(SEARCHERS)}")
    space = _space(raw.pop("space", None) or {}, searcher)

    multi = searcher == "optuna-multi"
    metric = raw.pop("metric", ["val_avg_acc", "val_forgetting"] if multi else "val_avg_acc")
    mode = raw.pop("mode", ["max", "min"] if multi else "max")
    metric, mode = _metric_mode(metric, mode, multi)

    num_samples = _int(raw.pop("num_samples", 8), "spec.num_samples", 1, MAX_SAMPLES)
    max_concurrent = _int(raw.pop("max_concurrent", 2), "spec.max_concurrent", 1, MAX_CONCURRENT)
    max_failures = _int(raw.pop("max_failures", 2), "spec.max_failures", -1, 1000)

    sched_raw = raw.pop("scheduler", None)
    if sched_raw in (None, "none", False):
        sched_raw = {"name": "none"}
    elif isinstance(sched_raw, str):
        sched_raw = {"name": sched_raw}
    scheduler = _section(Scheduler, sched_raw, "spec.scheduler")
    if scheduler.name not in ("asha", "none"):
        raise UserError(f"spec.scheduler.name: {scheduler.name!r} is not one of asha, none")
    _int(scheduler.grace_period, "spec.scheduler.grace_period", 1, LIMITS["data.num_tasks"][1])
    _int(scheduler.reduction_factor, "spec.scheduler.reduction_factor", 2, 1000)
    if scheduler.name == "asha" and searcher == "grid":
        raise UserError("spec.scheduler: asha cannot stop trials of a grid searcher (every grid point must finish); use none")

    resources = _section(Resources, raw.pop("resources", None) or {}, "spec.resources")
    for k in ("cpus", "gpus"):
        v = getattr(resources, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "cpus" and v <= 0):
            raise UserError(f"spec.resources.{k}: {v!r} must be a number {'> 0' if k == 'cpus' else '>= 0'}")
        if not v <= MAX_RESOURCES[k]:
            raise UserError(f"spec.resources.{k}: {v!r} is out of range (at most {MAX_RESOURCES[k]} per trial)")
        if k == "gpus" and v > 1 and v != int(v):
            raise UserError(f"spec.resources.gpus: {v!r}: a fraction must be below 1, else a whole number")
    _int(resources.pack, "spec.resources.pack", 1, 64)
    varied = sorted(k for k in space if k.startswith("model.") or k in ("method.name", "data.name"))
    if resources.pack > 1 and varied:
        raise UserError(f"spec.resources.pack: {resources.pack} packs trials of one architecture, but the space varies "
                        f"{', '.join(varied)}; use pack: 1")

    confirm_raw = raw.pop("confirm", None)
    if confirm_raw in (None, False, "none"):
        confirm_raw = {}
    confirm = _section(Confirm, confirm_raw, "spec.confirm")
    _int(confirm.top_k, "spec.confirm.top_k", 0, MAX_SAMPLES)
    seeds = confirm.seeds
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = tuple(range(_int(seeds, "spec.confirm.seeds", 0, MAX_SEEDS)))
    if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"spec.confirm.seeds: expected a list of integer seeds or a count, got {confirm.seeds!r}")
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"spec.confirm.seeds: {len(seeds)} seeds is too many (at most {MAX_SEEDS})")
    lo, hi = LIMITS["seed"]
    for s in seeds:
        if not lo <= s <= hi:
            raise UserError(f"spec.confirm.seeds: {s!r} is out of range (a seed must be {lo} to {hi})")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"spec.confirm.seeds: {list(seeds)} repeats a seed")
    if confirm.top_k and not seeds:
        raise UserError("spec.confirm.seeds: required when confirm.top_k > 0")
    confirm = Confirm(top_k=confirm.top_k, seeds=tuple(seeds))

    wandb_raw = raw.pop("wandb", None)
    if wandb_raw is None or wandb_raw is True:
        wandb_raw = {}
    elif wandb_raw is False:
        wandb_raw = {"enabled": False}
    wandb = _section(Wandb, wandb_raw, "spec.wandb")
    if wandb.mode not in (None, "offline", "online", "disabled"):
        raise UserError(f"spec.wandb.mode: {wandb.mode!r} is not one of offline, online, disabled")
    if "api_key" in wandb_raw:  # never accepted: secrets stay in the environment
        raise UserError("spec.wandb.api_key: not accepted; set WANDB_API_KEY in the environment")

    description = str(raw.pop("description", "") or "")
    methods_raw, study_raw = raw.pop("methods", None), raw.pop("study", None)
    assert not raw, raw  # every field was popped above

    spec = Spec(
        name=name, base=base, set=sets, space=space, searcher=searcher, metric=metric, mode=mode,
        num_samples=num_samples, max_concurrent=max_concurrent, scheduler=scheduler, resources=resources,
        confirm=confirm, max_failures=max_failures, wandb=wandb, description=description,
    )
    if methods_raw is not None:
        from sweeps.study import study_spec

        return study_spec(spec, methods_raw, study_raw, check_configs=check_configs)
    if study_raw is not None:
        raise UserError("spec.study: only a study has one; list the methods to compare in spec.methods")
    if not space and searcher != "grid":
        raise UserError(f"spec.space: empty; the {searcher} searcher needs at least one dimension")
    if check_configs:
        _check_configs(spec)
    return spec


def _int(v: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise UserError(f"{key}: {v!r} must be an integer >= {lo}")
    if v > hi:
        raise UserError(f"{key}: {v!r} is out of range (must be {lo} to {hi})")
    return v


def _section(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{key}: expected a mapping, got {raw!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names) - ({"api_key"} if cls is Wandb else set()))
    if unknown:
        raise UserError(f"{key}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    return cls(**{k: v for k, v in raw.items() if k in names})


def _metric_mode(metric: Any, mode: Any, multi: bool) -> tuple[Any, Any]:
    metrics = [metric] if isinstance(metric, str) else metric
    modes = [mode] if isinstance(mode, str) else mode
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise UserError(f"spec.metric: expected a metric name or a list of them, got {metric!r}")
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise UserError(f"spec.mode: expected 'max', 'min' or a list of them, got {mode!r}")
    for m in metrics:
        if m not in METRICS:
            raise UserError(f"spec.metric: {m!r} is not one of {', '.join(METRICS)}")
    for m in modes:
        if m not in ("max", "min"):
            raise UserError(f"spec.mode: {m!r} is not one of max, min")
    if len(metrics) != len(modes):
        raise UserError(f"spec.mode: {len(modes)} mode(s) for {len(metrics)} metric(s)")
    if multi and len(metrics) < 2:
        raise UserError("spec.metric: the optuna-multi searcher needs a list of at least two metrics")
    if not multi and len(metrics) != 1:
        raise UserError("spec.metric: a single-objective searcher takes one metric; use searcher: optuna-multi for several")
    if multi:
        return tuple(metrics), tuple(modes)
    return metrics[0], modes[0]
