"""A study: several methods, each tuned with the same budget, compared in one table.

A study is a sweep spec with a ``methods`` section (docs/study.md)::

    base: split-fashion-mnist-pah        # dataset, backbone, epochs: the same for every method
    space: {train.lr: {loguniform: [1e-4, 1e-2]}}   # searched for every method (optional)
    methods: [pah, lwf, ewc, finetune]   # each with its params' default SPACE
    num_samples: 16                      # trials *per method*
    confirm: {top_k: 1, seeds: [0, 1, 2]}

or, per method, ``{ewc: {space: {ewc_lambda: {loguniform: [1, 1e6]}}, set: {...}}}`` (keys
without a dot are the method's own, ``method.KEY``; dotted keys are any config key). A
method's ``space`` replaces its default SPACE; the spec's shared ``space`` is added to every
method (its own keys win). A method's ``set`` fixes config keys for that method only: with
``base`` and ``set`` it makes the method's *default config*, the first trial of its search and
a candidate of the confirm phase next to its tuned config.

Everything else is a sweep's: one Tune experiment (resumable, on a bucket, launched on SLURM
or Ray), whose searcher (sweeps/multisearch.py) hands the trials out over the methods in
turn, each method's trials asked of its own Optuna study. This module validates the
``methods`` section into :class:`~sweeps.schema.MethodEntry` items and, once the search has
ended, picks each method's confirm candidates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pah.errors import UserError
from sweeps.schema import MethodEntry, Spec, Study, _check_configs, _flatten_space, _space

__all__ = ["study_spec", "method_spec", "default_space", "study_candidates", "base_line", "reference_of",
           "method_params"]


def method_params(name: str) -> tuple[type, list[str]]:
    """The params dataclass of method ``name`` and its hyperparameter names (all fields but ``name``)."""
    from pah.conf import PARAMS  # the params alone: the implementations (torch) stay out of the driver

    params = PARAMS.get(name)
    return params, [f.name for f in dataclasses.fields(params) if f.name != "name"]


def default_space(name: str) -> dict[str, Any]:
    """Method ``name``'s default search space, in the spec's syntax with full keys (``method.KEY``)."""
    params, _ = method_params(name)
    return {_full_key(k): v for k, v in (getattr(params, "SPACE", None) or {}).items()}


def _full_key(key: str) -> str:
    return key if "." in key else f"method.{key}"


def _check_method_keys(name: str, keys: list[str], where: str) -> None:
    _, fields = method_params(name)
    for key in keys:
        if key == "method.name":
            raise UserError(f"{where}.{key}: a method entry cannot change its method")
        if key.startswith("method.") and key.removeprefix("method.") not in fields:
            raise UserError(f"{where}.{key.removeprefix('method.')}: {name} has no hyperparameter "
                            f"{key.removeprefix('method.')!r}; its hyperparameters: {', '.join(fields) or 'none'}")


def _entries(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[a, b]`` or ``{a: {...}, b: null}`` as (name, section) pairs, in the given order."""
    from pah.conf import PARAMS as METHODS  # the declared method names

    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        pairs = []
        for item in raw:
            if isinstance(item, dict) and len(item) == 1:  # [pah, {ewc: {space: ...}}]
                pairs.append(next(iter(item.items())))
            else:
                pairs.append((item, None))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise UserError(f"spec.methods: expected a list of method names or a mapping of them, got {raw!r}")
    if not pairs:
        raise UserError(f"spec.methods: empty; name the methods to compare (valid: {', '.join(METHODS.names())})")
    out, seen = [], set()
    for name, section in pairs:
        if not isinstance(name, str) or name not in METHODS:
            raise UserError(f"spec.methods: unknown method {name!r}; valid: {', '.join(METHODS.names())}")
        if name in seen:
            raise UserError(f"spec.methods: {name!r} is listed twice")
        seen.add(name)
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise UserError(f"spec.methods.{name}: expected a mapping with 'space' and/or 'set', got {section!r}")
        unknown = sorted(set(section) - {"space", "set"})
        if unknown:
            raise UserError(f"spec.methods.{name}: unknown key {unknown[0]!r}; valid keys: space, set")
        out.append((name, section))
    return out


def study_spec(spec: Spec, methods_raw: Any, study_raw: Any, *, check_configs: bool = True) -> Spec:
    """``spec`` (validated as a sweep, its ``space`` shared by every method) made a study of ``methods_raw``."""
    from pah.config import flatten

    if spec.searcher not in ("optuna-tpe", "optuna-multi"):
        raise UserError(f"spec.searcher: a study searches each method with its own Optuna study: use optuna-tpe "
                        f"or optuna-multi, not {spec.searcher}")
    if spec.resources.pack > 1:
        raise UserError(f"spec.resources.pack: {spec.resources.pack} packs trials of one method; a study trains "
                        "several: use pack: 1")
    for key in spec.space:
        if key.startswith("method.") or key in ("data.name", "seed"):
            raise UserError(f"spec.space.{key}: a study's shared space cannot vary {key}; give a method's own "
                            "keys under spec.methods.METHOD.space")
    for key in spec.set:
        if key.startswith("method."):
            raise UserError(f"spec.set.{key}: a study sets method keys per method (spec.methods.METHOD.set)")
    if not spec.confirm.top_k:
        raise UserError("spec.confirm: a study's table is made of confirmed runs; give e.g. "
                        "confirm: {top_k: 1, seeds: [0, 1, 2]}")

    entries = []
    dataset = _dataset(spec)
    for name, section in _entries(methods_raw):
        where = f"spec.methods.{name}"
        own_raw = section.get("space")
        if own_raw is None:
            own_raw = default_space(name)
        elif not isinstance(own_raw, dict):
            raise UserError(f"{where}.space: expected a mapping of keys to distributions, got {own_raw!r}")
        own_raw = {_full_key(k): v for k, v in _flatten_space(own_raw).items()}
        _check_method_keys(name, list(own_raw), f"{where}.space")
        try:
            own = _space(own_raw, spec.searcher)
        except UserError as e:  # named as the user wrote it: spec.methods.ewc.space.ewc_lambda
            text = str(e)
            for prefix in ("spec.space.method.", "spec.space."):
                if text.startswith(prefix):
                    text = f"{where}.space.{text.removeprefix(prefix)}"
                    break
            raise UserError(text) from None
        space = {**spec.space, **own}
        sets = section.get("set") or {}
        if not isinstance(sets, dict):
            raise UserError(f"{where}.set: expected a mapping of config keys to values, got {sets!r}")
        sets = {_full_key(k): v for k, v in flatten(sets).items()}
        _check_method_keys(name, list(sets), f"{where}.set")
        sets = {**_preset_method(dataset, name), **sets}  # the method's own preset for this dataset, then the spec's
        if not space:
            raise UserError(f"{where}: nothing to search ({name}'s params have no default SPACE and spec.space is "
                            f"empty); give {where}.space or a shared spec.space such as train.lr")
        entries.append(MethodEntry(name=name, space=space, set=sets))

    if study_raw in (None, {}):
        study_raw = {}
    if not isinstance(study_raw, dict):
        raise UserError(f"spec.study: expected a mapping, got {study_raw!r}")
    unknown = sorted(set(study_raw) - {"reference"})
    if unknown:
        raise UserError(f"spec.study: unknown key {unknown[0]!r}; valid keys: reference")
    names = [e.name for e in entries]
    reference = study_raw.get("reference")
    if reference is None:
        reference = "pah" if "pah" in names else names[0]
    if reference not in names:
        raise UserError(f"spec.study.reference: {reference!r} is not one of the study's methods ({', '.join(names)})")

    # every method's trials share the spec's searched keys through its own entry
    out = dataclasses.replace(spec, space={}, methods=tuple(entries), study=Study(reference=reference))
    if check_configs:
        for e in entries:
            try:
                _check_configs(method_spec(out, e.name))
            except UserError as err:
                raise UserError(f"spec.methods.{e.name}: {err}") from None
    return out


def _dataset(spec: Spec) -> str | None:
    from pah.config import load_config

    try:
        return load_config(spec.base, spec.config_overrides()).data.name
    except UserError as e:
        raise UserError(f"spec.base/set: {e}") from None


def _preset_method(dataset: str | None, name: str) -> dict[str, Any]:
    """The method section of the shipped preset DATASET-METHOD (``method.KEY`` keys), where there is one:
    a method's default config on a benchmark is the one the project ships for it."""
    from pah.config import flatten, preset_dict, preset_names

    preset = f"{dataset}-{name}"
    if preset not in preset_names():
        return {}
    section = preset_dict(preset).get("method") or {}
    return {f"method.{k}": v for k, v in flatten(section).items() if k != "name"}


def reference_of(spec: Spec) -> str:
    return spec.study.reference or spec.methods[0].name


def method_spec(spec: Spec, name: str) -> Spec:
    """Method ``name``'s part of a study as a plain sweep spec: its space, and its default config as the base
    (the spec's ``set``, the method's name and its own ``set``)."""
    entry = spec.method(name)
    return dataclasses.replace(spec, space=dict(entry.space), set={**spec.set, "method.name": name, **entry.set},
                               methods=(), study=Study(), name=f"{spec.name}-{name}")


def base_line(spec: Spec) -> str:
    """What the search does with each method's default config, in one line."""
    from sweeps.search import base_point

    firsts, outside = [], []
    for e in spec.methods:
        b = base_point(method_spec(spec, e.name))
        (outside if b["outside"] else firsts).append(e.name)
    line = (f"[search] study of {len(spec.methods)} methods, {spec.num_samples} trials each, asked in turn; "
            f"each method's trial 1 is its default config")
    if outside:
        line += f" (for {', '.join(outside)} only in the keys whose default lies in the space)"
    return line + "; the confirm phase runs every default config too"


def study_candidates(sweep_dir: Path, spec: Spec) -> list[dict[str, Any]]:
    """Each method's confirm candidates (its top-K search configs and its default config), tagged with
    ``"method"``, their params naming the method so that the confirm trials train it."""
    from sweeps.phases import select_candidates
    from sweeps.search import base_point

    out = []
    for e in spec.methods:
        sub = method_spec(spec, e.name)
        cands = select_candidates(sweep_dir, sub, base=base_point(sub), keep=lambda res, m=e.name: res.get("method") == m)
        for c in cands:
            c["params"] = {"method.name": e.name, **{k: v for k, v in c["params"].items() if k != "method.name"}}
            c["method"] = e.name
        out += cands
    return out
