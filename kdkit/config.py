"""Typed, strict run configuration: YAML in, validated dataclasses out.

Every section is a dataclass. :func:`from_dict` checks each key against the dataclass fields and each
value against the field's type annotation, so a misspelled key or a string where a number belongs is an
error that names the key (and the closest valid one). It is written here rather than taken from a
validation library because the checks needed are small (scalars, lists, optionals, literals, nested
dataclasses) and the error messages (with a close-match suggestion and a dotted path) matter most.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError
from .registry import suggest

# ----------------------------------------------------------------------------- generic validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it (ints are widened to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = suggest(str(value), [str(c) for c in choices])
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{_join(where, key)}'{suggest(str(key), list(fields))}"
                f" (valid keys: {', '.join(fields)})"
            )
        kwargs[key] = _convert(value, hints[key], _join(where, key))
    missing = [
        k
        for k, f in fields.items()
        if k not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{name}: missing required key(s) {', '.join(_join(where, m) for m in missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {e}") from None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (dataclasses become dicts), suitable for YAML and checkpoints."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        name = getattr(type(obj), "method_name", None)
        return {"name": name, **out} if name else out
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- the run schema


@dataclass
class ModelSpec:
    """A network from the model zoo, optionally initialised from a kdkit checkpoint."""

    name: str
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # data directory; also $KDKIT_DATA; then the user cache, then system dirs
    batch_size: int = 64
    eval_batch_size: int = 512
    val_fraction: float = 0.1  # of the training set, split by `train.seed`
    augment: bool = True
    download: bool = True  # fetch from the official location when missing
    verify: bool = True  # check official checksums (turn off for your own re-packed files)
    image_size: int = 32  # folder datasets only: images are resized to this square size
    limit_train: int | None = None  # use only the first N training samples (quick experiments)
    num_workers: int = 0  # worker processes: folder datasets and the dataloader pipeline
    pipeline: Literal["memory", "dataloader"] = "memory"  # dataloader: per-image transforms (reference)
    cutout: int = 0  # side of the Cutout square (0: off), training augmentation
    replay_views: int = 0  # >0: each sample has this many fixed augmented views, epoch e shows view e % n

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.cutout < 0 or self.num_workers < 0 or self.replay_views < 0:
            raise ValueError("cutout, num_workers and replay_views must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class ScheduleConfig:
    name: Literal["step", "cosine", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)  # epochs at which step decays the lr
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    min_lr: float = 0.0  # cosine floor


@dataclass
class TeacherCacheConfig:
    """Compute the teachers' outputs once and reuse them (exact when augmentation is off or replayed)."""

    store: Literal["memory", "disk"] = "memory"
    path: str | None = None  # disk: the cache directory (default: <run dir>/teacher_cache)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # float32 is exact
    topk: int | None = None  # keep only the k largest logits per sample (large class counts; approximate)

    def __post_init__(self) -> None:
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    amp: bool = True  # bf16 autocast, on CUDA only
    out_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    deterministic: bool = True
    grad_clip: float | None = None
    eval_every: int = 1
    log_every: int = 50  # steps between reading the loss on the host (finite check, progress bar)
    channels_last: bool | None = None  # None: on for CUDA
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"  # torch.compile the step
    compile_backend: str = "inductor"
    compile_teacher: bool = False  # torch.compile the teacher's forward too
    teacher_cache: TeacherCacheConfig | None = None  # store teacher outputs (see docs/speed.md)
    ghost_batch_size: int | None = None  # batch-norm statistics over groups of this many samples (per rank)

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.ghost_batch_size is not None and self.ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size must be >= 2 (batch norm needs 2 samples), got "
                             f"{self.ghost_batch_size}")


@dataclass
class RunConfig:
    model: ModelSpec
    data: DataConfig = field(default_factory=DataConfig)
    teacher: list[ModelSpec] = field(default_factory=list)
    method: list[Any] = field(default_factory=list)  # method configs, validated by the method registry
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping (from YAML) into a :class:`RunConfig`."""
    from .methods import method_config  # local import: methods import the config module

    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    teacher = data.get("teacher")
    if isinstance(teacher, dict | str):
        data["teacher"] = [teacher]
    data["teacher"] = [{"name": t} if isinstance(t, str) else t for t in data.get("teacher") or []]
    if isinstance(data.get("model"), str):
        data["model"] = {"name": data["model"]}
    methods = data.pop("method", None) or [{"name": "vanilla"}]
    if isinstance(methods, dict | str):
        methods = [methods]
    if not isinstance(methods, list):
        raise ConfigError(f"method: expected a mapping or a list of mappings, got {methods!r}")
    cfg = from_dict(RunConfig, data)
    cfg.method = [method_config(m, f"method[{i}]" if len(methods) > 1 else "method")
                  for i, m in enumerate(methods)]
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a plain config mapping, in place.

    In a list of methods, an entry is addressed by index or by name: ``method.kd.temperature=2``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: i + 1])
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, parts)] = value
        else:
            node[last] = value
    return data


def _descend(node: Any, part: str, path: list[str]) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {'.'.join(path)}: '{path[-2]}' is not a section")
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    elif isinstance(child, str) and part in ("method", "model"):
        child = node[part] = {"name": child}
    if part == "method" and isinstance(child, dict):
        return child  # a single method is addressed directly: method.temperature=2
    return child


def _list_index(node: list, part: str, path: list[str]) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    names = [e.get("name") if isinstance(e, dict) else e for e in node]
    if part in names:
        return names.index(part)
    raise ConfigError(f"--set {'.'.join(path)}: no entry '{part}' (entries: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML recipe (or a mapping), apply ``--set`` overrides and validate."""
    data = load_yaml(path) if path is not None else dict(base or {})
    return parse_config(apply_overrides(data, list(overrides or [])))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
