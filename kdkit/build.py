"""From a validated :class:`~kdkit.config.RunConfig` to data loaders, models and a distiller, and to a
:class:`~kdkit.engine.trainer.Trainer` over them (:func:`from_config`, :func:`resume`): the layer above
the engine, which takes built parts and never builds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import batch as batch_protocol
from . import distributed
from .config import RunConfig, network_names, trainable_specs
from .data import Dataset, build_loaders
from .engine.checkpoint import inference_record, load_checkpoint
from .engine.rebuild import build_model, load_network, stored_config
from .engine.trainer import Built, Callback, Trainer
from .errors import CheckpointError, ConfigError, KdkitError, first_line
from .methods import Distiller, create_method
from .models.external import carries_weights
from .tasks import create_task
from .transforms import GhostBatchNorm, apply_transforms


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"train.device: {e}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"train.device '{name[:40]}': kdkit trains on cpu, cuda[:N], mps or xpu (or 'auto')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return device


def use_channels_last(cfg: RunConfig, device: torch.device) -> bool:
    """``train.channels_last``, or by default: on for CUDA (faster convolutions under bf16)."""
    return cfg.train.channels_last if cfg.train.channels_last is not None else device.type == "cuda"


def build(cfg: RunConfig, device: torch.device | None = None, rank: int = 0, world_size: int = 1,
          dataset: Dataset | None = None, load_teachers: bool = True) -> Built:
    """Load the data (or use ``dataset``), create (and load) the models, and set up the methods on probed
    shapes. ``rank``/``world_size`` shard the data for distributed training. ``load_teachers=False``
    keeps randomly initialised teachers (speed measurements)."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    device = device or pick_device(cfg.train.device)
    channels_last = use_channels_last(cfg, device)
    loaders = build_loaders(cfg.data, cfg.train.seed, device, dataset=dataset, rank=rank, world_size=world_size,
                            channels_last=channels_last)
    ds = loaders.dataset
    for spec in [cfg.model, *cfg.peers, *cfg.teacher]:  # model.input picks one of several inputs per sample
        if spec.input is not None and not batch_protocol.structured(loaders.input_shape):
            raise ConfigError(f"'{spec.name}' has input: {spec.input!r}, but {ds.name} gives one input per sample "
                              "(a cross-modal run needs a paired dataset: two inputs per sample, e.g. "
                              "fashion_mnist_edges)")
    torch.manual_seed(cfg.train.seed)  # model initialisation depends on the seed only
    student = build_model(cfg.model, ds.num_classes, ds.in_channels)
    ghost = GhostBatchNorm(cfg.train.ghost_batch_size) if cfg.train.ghost_batch_size else None
    transforms = list(cfg.model.transforms) + ([ghost] if ghost else [])
    # before the Distiller: its feature taps must hook the transformed network's modules
    student = apply_transforms(student, transforms, loaders.input_shape)
    peers, peer_transforms = {}, {}
    for name, spec in list(trainable_specs(cfg).items())[1:]:
        peer = build_model(spec, ds.num_classes, ds.in_channels)
        peer_transforms[name] = list(spec.transforms) + ([ghost] if ghost else [])
        peers[name] = apply_transforms(peer, peer_transforms[name], loaders.input_shape).to(device)
    teachers = []
    data = inference_record(ds, loaders.input_shape)  # what each teacher's checkpoint must have seen
    for spec in cfg.teacher:
        if not spec.checkpoint and load_teachers and not carries_weights(spec.name):
            raise ConfigError(f"teacher '{spec.name}' needs a checkpoint (train one with `kdkit train`; a Hugging Face "
                              "model saved with save_pretrained is named hf:<folder> and needs none)")
        teacher = build_model(spec, ds.num_classes, ds.in_channels, load=load_teachers, data=data)
        teachers.append(apply_transforms(teacher, spec.transforms, loaders.input_shape))
    methods = [create_method(m) for m in cfg.method]
    mean, std = getattr(loaders.train, "mean", None), getattr(loaders.train, "std", None)
    for m in methods:
        m.input_norm = (mean, std) if mean is not None and std is not None else None
    if teachers and not any(m.needs_teacher for m in methods):
        raise ConfigError(f"a teacher is set but method(s) {', '.join(m.name for m in methods)} do not use one")
    try:
        distiller = Distiller(student.to(device), methods, [t.to(device) for t in teachers],
                              input_shape=loaders.input_shape, num_samples=len(loaders.train.data), peers=peers,
                              names=network_names(cfg)[1 + len(peers):], task=create_task(cfg.task),
                              views=cfg.data.views)
    except KdkitError:
        raise
    except RuntimeError as e:  # a model that cannot run on this input size
        raise ConfigError(f"cannot run the models on {ds.name} inputs {loaders.input_shape}: {e}") from None
    except TypeError as e:  # a forward that does not take the inputs (several, given as keywords)
        several = batch_protocol.structured(loaders.input_shape)
        hint = ("; with several inputs per sample, model.input names the one a network takes (teacher.input, "
                "peers' too)") if several else ""
        raise ConfigError(f"cannot run the models on {ds.name} inputs {batch_protocol.shapes(loaders.input_shape)}: "
                          f"{first_line(e)}{hint}") from None
    specs = dict(zip(distiller.networks(), [cfg.model, *cfg.peers, *cfg.teacher]))
    for name, info in distiller.infos.items():  # logits of the right size, before any file is written
        distiller.task.check_output(info.output_shape, ds, f"network '{name}' ('{specs[name].name}')")
    out_shape = distiller.infos["student"].output_shape
    for m in distiller.methods:
        if m.needs_dense_output and (out_shape is None or len(out_shape) != 3):
            raise ConfigError(f"method {m.name} distils per-pixel outputs [batch, classes, height, width]; the student "
                              f"gives {list(out_shape or [])} per sample (use it with task: segmentation)")
    if cfg.train.teacher_cache is not None:
        distiller.task.check_cache(ds, len(loaders.train.data))
    if ghost:  # the methods' own trainable modules (regressors, embeddings) normalise the same way
        ghost.apply(distiller.methods)
    distiller = distiller.to(device)
    if channels_last:
        distiller.to(memory_format=torch.channels_last)  # also moves the teachers (Distiller._apply)
    return Built(loaders, distiller, device, transforms, peer_transforms)


def from_config(cfg: RunConfig, built: Built | None = None, run_dir: str | Path | None = None,
                callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = None,
                write_files: bool = True, dist_info: distributed.DistInfo | None = None,
                dataset: Dataset | None = None) -> Trainer:
    """A :class:`Trainer` for ``cfg``: joins the process group under ``torchrun``, builds the parts on
    this rank's device (unless ``built`` is given) and hands them to the trainer. ``dataset``: train on it
    instead of ``cfg.data.name``'s (e.g. :func:`kdkit.dataset_from_loaders` of your own DataLoaders)."""
    dist = dist_info or distributed.from_env()
    if dataset is not None and dataset.name != cfg.data.name:
        raise ConfigError(f"data.name is '{cfg.data.name}' but the dataset given is '{dataset.name}': set data.name "
                          f"to '{dataset.name}', so that the run's files say what it was trained on")
    if built is None:
        device = distributed.setup(dist, cfg.train.device) if dist.enabled else None
        built = build(cfg, device, dist.rank, dist.world_size, dataset=dataset)
    return Trainer(cfg, built, run_dir=run_dir, callbacks=callbacks, log=log, write_files=write_files,
                   dist_info=dist)


def resume(run_dir: str | Path, epochs: int | None = None, **kwargs: Any) -> Trainer:
    """Continue the run in ``run_dir`` (or from a checkpoint file) from its last checkpoint, with the
    config it was started with; ``kwargs`` as for :func:`from_config`. The checkpoint is checked whole
    against the rebuilt run before any of it is used. ``epochs``: extend the run (finished or not) to
    this many epochs; the learning-rate schedule is then recomputed over the new length, so the result
    is not that of a run started with that many epochs. A finished run resumed without it does nothing."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt" if run_dir.is_dir() else run_dir
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} holds a model-only checkpoint, which cannot be resumed")
    cfg = stored_config(ckpt, path)
    if epochs is not None:
        done = ckpt.get("epoch")
        if cfg.stages:
            raise ConfigError("this run lists its stages (stages:), whose epochs fix its length; --epochs extends "
                              "runs with the default plan only")
        if type(done) is int and epochs < done:
            raise ConfigError(f"--epochs {epochs}: the run has completed {done} epochs already")
        cfg.train.epochs = epochs  # the schedule is recomputed over the new length
    trainer = from_config(cfg, run_dir=run_dir if run_dir.is_dir() else run_dir.parent, **kwargs)
    trainer.load_state(ckpt, str(path))
    return trainer


def trainer_in(run_dir: str | Path, recipe: dict[str, Any] | Callable[[], dict[str, Any]], **kwargs: Any) -> Trainer:
    """The trainer of the run kept in ``run_dir``: resumed from its checkpoint when there is one (a finished
    run then trains nothing), else ``recipe`` (a config mapping, or a function making it) started in that
    folder, replacing whatever a run killed before its first checkpoint left there. ``kwargs`` as for
    :func:`from_config`. Resumable tables and sweeps train every run through it."""
    import json

    from .config import load_config

    run_dir = Path(run_dir)
    if (run_dir / "checkpoint.pt").is_file():
        return resume(run_dir, **kwargs)
    data = json.loads(json.dumps(recipe() if callable(recipe) else recipe))
    data["train"] = {**(data.get("train") or {}), "out_dir": str(run_dir.parent), "run_name": run_dir.name,
                     "existing": "overwrite"}
    return from_config(load_config(base=data), **kwargs)


def export_branch(checkpoint: str | Path, branch: int, out: str | Path, net: str | None = None) -> Path:
    """Write trunk + branch ``branch`` of a branched network (model transform ``branch``) of a run's
    checkpoint as a plain network's kdkit checkpoint: the zoo model without the branch transform, its
    weights, and the run's config with that transform removed (so ``kdkit eval`` and teachers take it)."""
    from .engine.checkpoint import FORMAT, VERSION, save_atomic
    from .models.branch import Branched, branch_state_dict

    loaded = load_network(checkpoint, net)
    model, record, ckpt = loaded.model, loaded.record, loaded.ckpt
    if not isinstance(model, Branched):
        raise ConfigError(f"{checkpoint}: network '{net or 'student'}' is not branched (no 'branch' transform)")
    leaves = model.leaves()
    if not 0 <= branch < len(leaves):
        raise ConfigError(f"--branch {branch}: the network has branches 0..{len(leaves) - 1}")
    kept = [t for t in record.get("transforms", []) if t.get("name") != "branch"]
    plain = {**record, "transforms": kept}
    config = dict(ckpt["config"])
    config["model"] = {**config["model"], "transforms": [t for t in config["model"].get("transforms", [])
                                                         if t.get("name") != "branch"], "checkpoint": None}
    config["peers"], config["method"] = [], [{"name": "vanilla"}]
    return save_atomic({"format": FORMAT, "version": VERSION, "config": config, "model": plain,
                        "student": branch_state_dict(model, branch)}, out)
