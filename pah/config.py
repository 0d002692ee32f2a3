"""One typed, frozen configuration for a trial, validated where it enters.

A config is data: YAML (a file, or a preset shipped in ``pah/presets``) plus
``--set a.b=c`` overrides. Every key is checked against the dataclasses below; the
``method`` section is checked against the chosen method's own ``Params`` dataclass,
so each method declares its hyperparameters next to its code. Any problem raises
:class:`~pah.errors.UserError` naming the field and listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pah.errors import UserError

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodParams",
    "load_config",
    "config_id",
    "preset_names",
    "parse_overrides",
    "flatten",
]

PRESET_DIR = Path(__file__).parent / "presets"


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    name: str = "split-digits"
    #: dataset root; None means $PAH_DATA_DIR, then the dataset's usual places
    root: str | None = None
    #: allow torchvision to download the dataset when it is missing (needs network)
    download: bool = False
    num_tasks: int | None = None
    classes_per_task: int | None = None
    #: "fixed": classes in label order; "seeded": a permutation drawn from the trial seed
    class_order: Literal["fixed", "seeded"] = "fixed"
    val_fraction: float = 0.1
    #: random crop + horizontal flip on the device; None means the benchmark's default
    augment: bool | None = None
    #: synthetic only: copy the shape (tasks, classes, image size, channels) of this benchmark
    shape_like: str | None = None
    #: synthetic only: overrides of the copied shape
    image_size: int | None = None
    channels: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in [0, 1)")
        for key in ("num_tasks", "classes_per_task", "image_size", "channels", "train_per_class", "test_per_class"):
            v = getattr(self, key)
            _check(v is None or v >= 1, f"data.{key}", v, ">= 1")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small-cnn"
    #: load torchvision's ImageNet weights (needs network or a warm torch hub cache)
    pretrained: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs_per_task: int = 5
    batch_size: int = 64
    eval_batch_size: int = 512
    optimizer: Literal["adamw", "sgd"] = "adamw"
    #: learning rate of the shared backbone
    lr: float = 1e-3
    #: learning rate of heads, hypernetwork, prototypes and task embeddings
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    #: "auto": bf16 autocast on CUDA, fp32 on CPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    #: torch.compile the backbone (CUDA only; ignored on CPU)
    compile: bool = False
    #: steps between checks for a non-finite loss (the only host syncs of the hot loop)
    check_every: int = 100

    def __post_init__(self) -> None:
        _check(self.epochs_per_task >= 1, "train.epochs_per_task", self.epochs_per_task, ">= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(self.head_lr > 0, "train.head_lr", self.head_lr, "> 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(self.check_every >= 1, "train.check_every", self.check_every, ">= 1")


@dataclass(frozen=True)
class MethodParams:
    """Base of every method's hyperparameters; subclasses add their own fields."""

    name: str = "pah"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodParams = field(default_factory=MethodParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, value: object, what: str) -> None:
    if not ok:
        raise UserError(f"{key}: {value!r} is out of range (must be {what})")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; numbers given as strings are accepted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise UserError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in typing.get_args(tp))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a Params dataclass
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = prefix or "config"
        raise UserError(
            f"unknown key {prefix + '.' if prefix else ''}{unknown[0]!s} in {where}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    from pah.methods import METHODS  # local: methods import torch

    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise UserError(f"method: expected a mapping, got {method_raw!r}")
    name = method_raw.get("name", MethodParams.name)
    params_cls = METHODS.get(_coerce(name, str, "method.name")).Params
    method = _build(params_cls, method_raw, "method")
    cfg = _build(Config, raw, "")
    cfg = dataclasses.replace(cfg, method=method)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    from pah.data import BENCHMARKS
    from pah.models import BACKBONES

    BENCHMARKS.get(cfg.data.name)  # raises UserError listing the valid names
    BACKBONES.get(cfg.model.backbone)
    if cfg.data.shape_like is not None:
        if cfg.data.name != "synthetic":
            raise UserError("data.shape_like: only the 'synthetic' benchmark takes a shape_like")
        if cfg.data.shape_like == "synthetic":
            raise UserError("data.shape_like: 'synthetic' cannot copy its own shape")
        BENCHMARKS.get(cfg.data.shape_like)


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def preset_names() -> list[str]:
    """Every shipped preset: one per (benchmark, method) pair, named DATASET-METHOD."""
    datasets = sorted(p.stem for p in (PRESET_DIR / "datasets").glob("*.yaml"))
    methods = sorted(p.stem for p in (PRESET_DIR / "methods").glob("*.yaml"))
    return [f"{d}-{m}" for d in datasets for m in methods]


def preset_dict(name: str) -> dict[str, Any]:
    datasets = sorted((p.stem for p in (PRESET_DIR / "datasets").glob("*.yaml")), key=len, reverse=True)
    methods = {p.stem for p in (PRESET_DIR / "methods").glob("*.yaml")}
    for d in datasets:
        m = name[len(d) + 1 :]
        if name.startswith(d + "-") and m in methods:
            raw = _deep_merge(_read_yaml(PRESET_DIR / "datasets" / f"{d}.yaml"), _read_yaml(PRESET_DIR / "methods" / f"{m}.yaml"))
            pair = PRESET_DIR / "pairs" / f"{name}.yaml"
            if pair.exists():
                raw = _deep_merge(raw, _read_yaml(pair))
            return raw
    for d in datasets:
        if name.startswith(d + "-"):
            raise UserError(f"preset {name!r}: unknown method {name[len(d) + 1 :]!r}; valid: {', '.join(sorted(methods))}")
    raise UserError(f"config {name!r} is neither a YAML file nor a preset; presets are DATASET-METHOD, e.g. {', '.join(preset_names()[:3])}, ...")


def source_dict(source: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML path or a preset name (a config file may name a ``preset`` to start from)."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} does not exist")
        raw = _read_yaml(path)
        base = raw.pop("preset", None)
        if base is not None:
            raw = _deep_merge(preset_dict(str(base)), raw)
        return raw
    return preset_dict(str(source))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys that ``--set`` and sweep specs use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs_per_task=3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return out


def load_config(source: str | Path | dict[str, Any] = "split-digits-pah", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a preset name, YAML path or mapping plus ``--set`` overrides into a validated Config."""
    raw = dict(source) if isinstance(source, dict) else source_dict(source)
    over = parse_overrides(overrides)
    base_method = (raw.get("method") or {}).get("name", MethodParams.name)
    new_method = (over.get("method") or {}).get("name", base_method) if isinstance(over.get("method"), dict) else base_method
    if new_method != base_method:
        # switching methods: the base's method-specific keys belong to the old method
        raw["method"] = {}
    return config_from_dict(_deep_merge(raw, over))


def config_id(cfg: Config) -> str:
    """Identity of a run without its seed: trials sharing it are seeds of one config."""
    d = cfg.to_dict()
    d.pop("seed")
    d["data"].pop("root")
    d["data"].pop("download")
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
