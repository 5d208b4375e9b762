"""Typed, strict run configuration: YAML in, validated dataclasses out.

Every section is a dataclass validated by :func:`kdkit.schema.from_dict` (unknown keys and wrong types
are errors that name the dotted key and the closest valid one); method entries are validated by the
method registry (:func:`kdkit.methods.method_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import binarize, lowrank, prune, qat, weight_share  # noqa: F401  (register the model transforms)
from .errors import ConfigError
from .methods import Stage, method_config, method_name
from .methods.distiller import teacher_names
from .models.external import use_names
from .schema import from_dict, to_dict
from .tasks import create_task
from .transforms import Transform, transform_config
from .yamlio import MAX_YAML_BYTES, MAX_YAML_NODES, apply_overrides, load_yaml, parse_yaml  # noqa: F401  (API)

# ----------------------------------------------------------------------------- the run schema


@dataclass
class ModelSpec:
    """A network: a zoo name, ``package.module:Class`` or ``timm:<name>``; optionally initialised
    from a checkpoint: a kdkit checkpoint, a plain PyTorch ``state_dict`` file or a ``.safetensors`` file."""

    name: str
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    transforms: list[Any] = field(default_factory=list)  # model transforms, validated by their registry
    net: str | None = None  # which of the checkpoint's networks to load (default: its student)
    id: str | None = None  # the network's name in this run (peers: peer1, peer2..; teachers: teacher..)
    lr: float | None = None  # trainable networks: this network's own base learning rate (default optim.lr)
    weight_decay: float | None = None  # and its own weight decay (default optim.weight_decay)
    # which part of a forward that returns a tuple/list (an index) or a dict (a key) is the logits;
    # default: the tensor itself, a sequence's first tensor, a dict's "logits" (or its only tensor)
    output: str | int | None = None
    # which input of a batch with several (a dict's key, a tuple's index) this network takes; default: all of
    # them as its forward expects (cross-modal distillation: the teacher sees one modality, the student another)
    input: str | int | None = None
    # plain state-dict / safetensors checkpoints: every weight must fit (false: load those that fit)
    strict: bool = True
    # teachers: use a checkpoint trained on another dataset, input size or normalisation (refused otherwise)
    other_data: bool = False

    def __post_init__(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


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
    # a safetensors file of images and labels that replaces the training split (a condensed or synthesised
    # set: kdkit condense); the test split and the normalisation stay the dataset's (kdkit/data/synthetic.py)
    train_file: str | None = None
    num_workers: int = 0  # worker processes: folder datasets and the dataloader pipeline
    pipeline: Literal["memory", "dataloader"] = "memory"  # dataloader: per-image transforms (reference)
    cutout: int = 0  # side of the Cutout square (0: off), training augmentation
    replay_views: int = 0  # >0: each sample has this many fixed augmented views, epoch e shows view e % n
    views: int = 1  # >1: each training batch in this many independently augmented views (kdcl: one per network)
    # normalisation (x / 255 - mean) / std per channel; default: the dataset's own statistics. Set them to
    # what a pretrained teacher was trained with (e.g. mean [0.0], std [1.0] for images in [0, 1])
    mean: list[float] | None = None
    std: list[float] | None = None
    # text datasets (docs/text.md): tokens per text (longer texts are cut, shorter padded), the size of the
    # WordPiece vocabulary trained on the training split, or a tokenizer of yours (tokenizer.json or its folder)
    max_length: int = 128
    vocab_size: int = 8000
    tokenizer: str | None = None
    text_column: str = "text"  # text_folder: the columns of train.csv / test.csv (.jsonl: the keys)
    label_column: str = "label"

    def __post_init__(self) -> None:
        for name, high in (("max_length", 1 << 16), ("vocab_size", 1 << 22)):
            if not 8 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [8, {high}], got {getattr(self, name)}")
        for name, high in (("batch_size", 1 << 24), ("eval_batch_size", 1 << 24), ("image_size", 4096)):
            if not 1 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [1, {high}], got {getattr(self, name)}")
        if not 1 <= self.views <= 64:
            raise ValueError(f"views must be in [1, 64], got {self.views}")
        for name, high in (("cutout", 4096), ("num_workers", 1024), ("replay_views", 1024)):
            if not 0 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [0, {high}], got {getattr(self, name)}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ValueError(f"limit_train must be >= 1, got {self.limit_train}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std are set together")
        if self.std is not None and (not self.std or min(self.std) <= 0 or len(self.std) != len(self.mean)):
            raise ValueError(f"std must be positive numbers, one per channel as in mean, got {self.std}")
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
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")


@dataclass
class ScheduleConfig:
    name: Literal["step", "cosine", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)  # epochs at which step decays the lr
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    min_lr: float = 0.0  # cosine floor

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {self.min_lr}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")


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
    # when the run directory already holds a run: error (default), overwrite (kdkit's files of the old run
    # are removed first) or new (the next free name: <run>-2, <run>-3, ...)
    existing: Literal["error", "overwrite", "new"] = "error"
    progress: bool = True
    deterministic: bool = True
    grad_clip: float | None = None
    eval_every: int = 1
    log_every: int = 50  # steps between reading the loss on the host (finite check, progress bar)
    # balance hints: each loss term's share of the gradient on the student over the first balance_steps
    # steps of a run (0: off), and a warning when one term's exceeds every other's by balance_factor
    balance_steps: int = 10
    balance_factor: float = 50.0
    channels_last: bool | None = None  # None: on for CUDA
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"  # torch.compile the step
    compile_backend: str = "inductor"
    compile_teacher: bool = False  # torch.compile the teacher's forward too
    teacher_cache: TeacherCacheConfig | None = None  # store teacher outputs (see docs/speed.md)
    ghost_batch_size: int | None = None  # batch-norm statistics over groups of this many samples (per rank)
    # CPU threads of this process (torch.set_num_threads; default: torch's). Results with one seed differ
    # between thread counts (reductions are summed in another order), so set it to reproduce a run exactly.
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.run_name is not None:
            parts = Path(self.run_name).parts
            if not parts or Path(self.run_name).is_absolute() or ".." in parts or "~" in self.run_name[:1]:
                raise ValueError(f"run_name must be a name inside out_dir (no absolute path, no '..'), got "
                                 f"{self.run_name!r}; --out PATH puts a run anywhere")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise ValueError(f"threads must be in [1, 4096], got {self.threads}")
        if self.log_every < 1 or self.eval_every < 1:
            raise ValueError(f"log_every and eval_every must be >= 1, got {self.log_every}, {self.eval_every}")
        if not 1 <= self.epochs <= 1_000_000:
            raise ValueError(f"epochs must be in [1, 1000000], got {self.epochs}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.balance_steps < 0 or not self.balance_factor > 1:
            raise ValueError(f"balance_steps must be >= 0 and balance_factor > 1, got {self.balance_steps}, "
                             f"{self.balance_factor}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.ghost_batch_size is not None and self.ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size must be >= 2 (batch norm needs 2 samples), got "
                             f"{self.ghost_batch_size}")


@dataclass
class RunConfig:
    model: ModelSpec  # the student
    data: DataConfig = field(default_factory=DataConfig)
    teacher: list[ModelSpec] = field(default_factory=list)
    peers: list[ModelSpec] = field(default_factory=list)  # trainable networks besides the student
    method: list[Any] = field(default_factory=list)  # method configs, validated by the method registry
    stages: list[Stage] = field(default_factory=list)  # default: the methods' preliminary stages, then main
    task: str | dict[str, Any] = "classification"  # a name, or {name: ..., <the task's options>}
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping (from YAML) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    teacher = data.get("teacher")
    if isinstance(teacher, dict | str):
        data["teacher"] = [teacher]
    data["teacher"] = [{"name": t} if isinstance(t, str) else t for t in data.get("teacher") or []]
    if isinstance(data.get("model"), str):
        data["model"] = {"name": data["model"]}
    if isinstance(data.get("peers"), list):
        data["peers"] = [{"name": p} if isinstance(p, str) else p for p in data["peers"]]
    methods = data.pop("method", None) or [{"name": "vanilla"}]
    if isinstance(methods, dict | str):
        methods = [methods]
    if not isinstance(methods, list):
        raise ConfigError(f"method: expected a mapping or a list of mappings, got {methods!r}")
    cfg = from_dict(RunConfig, data)
    specs = [("model", cfg.model)] + [(f"teacher[{i}]", t) for i, t in enumerate(cfg.teacher)] + [
        (f"peers[{i}]", p) for i, p in enumerate(cfg.peers)]
    for where, spec in specs:
        spec.transforms = [transform_config(t, f"{where}.transforms[{i}]") for i, t in enumerate(spec.transforms)]
    cfg.method = [method_config(m, f"method[{i}]" if len(methods) > 1 else "method")
                  for i, m in enumerate(methods)]
    create_task(cfg.task)  # the name and the options checked
    names = network_names(cfg)
    if len(set(names)) != len(names):
        raise ConfigError(f"network names (model, peers[].id, teacher[].id) must be unique, got {names}")
    return cfg


def trainable_specs(cfg: RunConfig) -> dict[str, ModelSpec]:
    """The run's trainable networks by name: the student, then the peers."""
    return dict(zip(network_names(cfg), [cfg.model, *cfg.peers]))


def trainable_spec(cfg: RunConfig, net: str | None, where: str) -> ModelSpec:
    """The spec of trainable network ``net`` (default: the student); a ConfigError naming ``where`` and the
    run's trainable networks if it has none of that name."""
    specs = trainable_specs(cfg)
    if (net or "student") not in specs:
        raise ConfigError(f"{where}: no trainable network '{net}' (the run's trainable networks: {', '.join(specs)})")
    return specs[net or "student"]


def network_names(cfg: RunConfig) -> list[str]:
    """The run's network names: ``student``, the peers (``id``, default ``peer1``..), the teachers
    (``id``, default ``teacher`` or ``teacher0``..)."""
    teachers = teacher_names(len(cfg.teacher))
    return (["student"] + [p.id or f"peer{i + 1}" for i, p in enumerate(cfg.peers)]
            + [t.id or teachers[i] for i, t in enumerate(cfg.teacher)])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, import_names: bool = True) -> RunConfig:
    """Load the user's YAML recipe (or a mapping), apply ``--set`` overrides and validate. A recipe is the
    user's word: the modules of its ``module:Class`` model names are imported (not from the working
    folder; :func:`kdkit.models.external.use_names`) unless ``import_names`` is false."""
    data = load_yaml(path) if path is not None else dict(base or {})
    try:
        cfg = parse_config(apply_overrides(data, list(overrides or [])))
        if import_names:
            use_names([s.name for s in (cfg.model, *cfg.peers, *cfg.teacher)], "config")
        return cfg
    except ConfigError as e:
        if path is None or str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {e}") from None


def recipe_names(data: dict[str, Any]) -> list[str]:
    """The model names a raw recipe mapping gives (model, peers, teachers), before validation."""
    specs = [data.get("model"), *(data.get("peers") or [])]
    teacher = data.get("teacher")
    specs += teacher if isinstance(teacher, list) else [teacher]
    names = [s.get("name") if isinstance(s, dict) else s for s in specs]
    return [n for n in names if isinstance(n, str)]


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The run configuration as plain data (method entries carry their registered names)."""
    return to_dict(cfg, lambda obj: method_name(obj) or (obj.name if isinstance(obj, Transform) else None))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_dict(cfg), sort_keys=False)
