"""One typed, frozen configuration for a trial, validated where it enters.

A config is data: YAML (a file, or a preset shipped in ``pah/presets``) plus
``--set a.b=c`` overrides. Every key is checked against the dataclasses below; the
``method`` section is checked against the chosen method's own ``Params`` dataclass,
declared in :mod:`pah.conf` beside every benchmark's shape and every backbone's name.
Any problem raises :class:`~pah.errors.UserError` naming the field and listing the valid keys.

Part of the configuration layer: this module imports neither torch nor numpy (nor the
methods, benchmarks and backbones that do); see docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pah.conf import BACKBONE_NAMES, PARAMS, SHAPES, MethodParams
from pah.conf.base import check as _check
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
    "read_yaml_file",
    "LIMITS",
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
    #: at most this many training images per class (a seeded subset: fast screening); synthetic: exactly this many
    train_per_class: int | None = None
    #: synthetic only: test images per class
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
    #: train each task for exactly this many steps instead (passes over its shuffled data, as many
    #: as it takes, the last one cut short; van de Ven's protocols: 2,000 a task); None: epochs_per_task
    iters_per_task: int | None = None
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
    #: capture each task's training step as one CUDA graph after its warm-up and replay it
    #: (CUDA only; ignored on CPU; see pah/step.py). On an H200 (bench/RESULTS.md) 7.6x the
    #: eager step of ResNet-18 at batch 64, and the same accuracy on Split-Fashion-MNIST.
    #: How a step is executed, not what it computes: it is not part of ``config_id``
    cuda_graph: bool = True
    #: steps between checks for a non-finite loss (the only host syncs of the hot loop)
    check_every: int = 100
    #: BatchNorm statistics. "freeze": batch statistics while learning the first task, then
    #: the running statistics are frozen, so from the second task on the model trains,
    #: distils and is tested as one and the same function. "adapt": batch statistics in
    #: every task, running statistics follow the latest task (see docs/method.md)
    batchnorm: Literal["freeze", "adapt", "task"] = "task"
    #: linear learning-rate warm-up over the first steps of every task (at most a fifth of its
    #: steps): Adam's second-moment estimate still holds the last task's small gradients when
    #: a new task's large ones arrive, and its first steps would be several times the learning rate
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        _check(self.epochs_per_task >= 1, "train.epochs_per_task", self.epochs_per_task, ">= 1")
        _check(self.iters_per_task is None or self.iters_per_task >= 1, "train.iters_per_task", self.iters_per_task, ">= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(self.head_lr > 0, "train.head_lr", self.head_lr, "> 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(self.check_every >= 1, "train.check_every", self.check_every, ">= 1")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")


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
        if len(errors) == 1:  # X | None: X's own message (a range, a type)
            raise errors[0]
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
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                pass
        if number is not None:
            _check_limit(key, number)
            if not -(2**63) <= number < 2**63:
                raise UserError(f"{key}: {value!r} is out of range (must fit in 64 bits)")
            return number
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise UserError(f"{key}: {value!r} is out of range (must be a finite number)")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a Params dataclass
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


#: Integer settings whose sizes no dataset or machine could honour: an error where they enter,
#: not a silent clamp or an out-of-memory crash later. 2**20 images is over ten times the whole
#: training set of the largest built-in benchmark (TinyImageNet, 100,000). Within the limit, a
#: batch larger than a task's training set is a warning from `pah train` (that task trains
#: full-batch), not an error: the size depends on the data, the split and the method.
LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),
    "train.batch_size": (1, 2**20),
    "train.eval_batch_size": (1, 2**20),
    "train.epochs_per_task": (1, 100_000),
    "train.iters_per_task": (1, 100_000_000),
    "data.num_tasks": (1, 10_000),
    "data.classes_per_task": (1, 100_000),
    "data.image_size": (1, 4096),
    "data.channels": (1, 64),
    "data.train_per_class": (1, 1_000_000),
    "data.test_per_class": (1, 1_000_000),
}


def _check_limit(key: str, value: Any) -> None:
    lo, hi = LIMITS.get(key, (None, None))
    if lo is not None and isinstance(value, int) and not lo <= value <= hi:
        raise UserError(f"{key}: {value!r} is out of range (must be {lo} to {hi})")


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
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise UserError(f"method: expected a mapping, got {method_raw!r}")
    name = method_raw.get("name", MethodParams.name)
    params_cls = PARAMS.get(_coerce(name, str, "method.name"))
    method = _build(params_cls, method_raw, "method")
    cfg = _build(Config, raw, "")
    cfg = dataclasses.replace(cfg, method=method)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    SHAPES.get(cfg.data.name)  # raises UserError listing the valid names
    BACKBONE_NAMES.get(cfg.model.backbone)
    if cfg.data.shape_like is not None:
        if cfg.data.name != "synthetic":
            raise UserError("data.shape_like: only the 'synthetic' benchmark takes a shape_like")
        if cfg.data.shape_like == "synthetic":
            raise UserError("data.shape_like: 'synthetic' cannot copy its own shape")
        SHAPES.get(cfg.data.shape_like)


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


#: A config or sweep spec is a few hundred bytes of YAML a few levels deep: far larger or deeper
#: input is not one, and is refused before it can exhaust memory or the stack.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_NODES = 100_000  # counted with YAML aliases expanded (a "billion laughs" file stops here)


def read_yaml_file(path: str | Path, *, what: str = "config file", allow_empty: bool = False) -> dict[str, Any]:
    """A user's YAML file as a mapping with string keys; anything else is a UserError naming the file.

    Only plain YAML data is accepted (``yaml.safe_load``: tags such as ``!!python/object`` are
    errors); the file must be UTF-8, at most 1 MiB, at most 16 levels deep, and not empty.
    """
    path = Path(path)
    where = f"{what} {str(path)!r}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{where} does not exist") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{where} is a directory; expected a YAML file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{where} is not a regular file; expected a YAML file")
    if st.st_size > MAX_FILE_BYTES:
        raise UserError(f"{where}: {st.st_size} bytes is too large (at most {MAX_FILE_BYTES} for a YAML config)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise UserError(f"{where}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (invalid byte at offset {e.start}); expected YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({problem}{at})") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    if data is None:
        if allow_empty:
            return {}
        raise UserError(f"{where} is empty; expected a mapping of keys to values")
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping (key: value) at the top level, got a {type(data).__name__}")
    _check_tree(data, where)
    return data


def _check_tree(data: dict[str, Any], where: str) -> None:
    """String keys, bounded depth and size (aliases counted every time they are used)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    nodes = 0
    while stack:
        node, depth, at = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UserError(f"{where}: too large (more than {MAX_NODES} values, YAML aliases expanded)")
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: nested too deeply at {at} (at most {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise UserError(f"{where}: key {k!r} in {at or 'the top level'} is not a string")
                stack.append((v, depth + 1, f"{at}.{k}" if at else k))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{at}[{i}]") for i, v in enumerate(node))


def _read_yaml(path: Path) -> dict[str, Any]:
    """A shipped preset file (an empty one is allowed: a pair with nothing to add)."""
    return read_yaml_file(path, what="preset file", allow_empty=True)


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
    if path.suffix in (".yaml", ".yml") or path.exists() or path.is_symlink():
        raw = read_yaml_file(path)
        base = raw.pop("preset", None)
        if base is not None:
            if not isinstance(base, str) or not base:
                raise UserError(f"{path}: preset: expected a preset name such as split-digits-pah, got {base!r}")
            raw = _deep_merge(preset_dict(base), raw)
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
        if not sep or not key.strip() or not all(p.strip() for p in key.split(".")):
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs_per_task=3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        except RecursionError:
            raise UserError(f"--set {key}: the value is nested too deeply") from None
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


#: keys added after runs existed, with their defaults: left out of ``config_id`` while at the default
_LATER_KEYS = {("train", "iters_per_task"): None}
#: how a step is executed, not what is learned: never part of ``config_id`` (runs before
#: cuda_graph became the default on 2026-12-04 left it out too, at its old default false)
_EXECUTION_KEYS = (("train", "cuda_graph"),)


def config_id(cfg: Config) -> str:
    """Identity of a run without its seed: trials sharing it are seeds of one config."""
    d = cfg.to_dict()
    d.pop("seed")
    d["data"].pop("root")
    d["data"].pop("download")
    for (section, key), default in _LATER_KEYS.items():  # ids of earlier runs stay valid
        if d[section].get(key) == default:
            d[section].pop(key)
    for section, key in _EXECUTION_KEYS:
        d[section].pop(key, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
