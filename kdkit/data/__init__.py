"""Datasets, looked up by name (``kdkit list datasets``), and the loaders built from them."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .. import batch as batch_protocol
from ..config import DataConfig
from ..errors import ConfigError
from ..registry import Registry
from .base import Dataset, ImageSet, TrainLoader
from .loader import BatchLoader

DATASETS: Registry[Callable[[DataConfig], Dataset]] = Registry("dataset")


def register_dataset(name: str):
    return DATASETS.register(name)


@register_dataset("digits")
def _digits(cfg: DataConfig) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); ships with scikit-learn."""
    from .digits import load_digits_dataset

    return load_digits_dataset(cfg)


@register_dataset("mnist")
def _mnist(cfg: DataConfig) -> Dataset:
    """MNIST handwritten digits (28x28 grey, 60k/10k), IDX files."""
    from .idx import load_idx_dataset

    return load_idx_dataset("mnist", cfg)


@register_dataset("fashion_mnist")
def _fashion(cfg: DataConfig) -> Dataset:
    """Fashion-MNIST clothing images (28x28 grey, 60k/10k), IDX files; Debian: dataset-fashion-mnist."""
    from .idx import load_idx_dataset

    return load_idx_dataset("fashion_mnist", cfg)


@register_dataset("cifar10")
def _cifar10(cfg: DataConfig) -> Dataset:
    """CIFAR-10 (32x32 RGB, 50k/10k, 10 classes), official python batches."""
    from .cifar import load_cifar

    return load_cifar("cifar10", cfg)


@register_dataset("cifar100")
def _cifar100(cfg: DataConfig) -> Dataset:
    """CIFAR-100 (32x32 RGB, 50k/10k, 100 fine classes), official python batches."""
    from .cifar import load_cifar

    return load_cifar("cifar100", cfg)


@register_dataset("fashion_canvas")
def _fashion_canvas(cfg: DataConfig) -> Dataset:
    """Segmentation: 64x64 canvases of 1-4 Fashion-MNIST garments, exact masks of 11 classes (10k/2k)."""
    from .canvas import load_canvas_dataset

    return load_canvas_dataset(cfg)


@register_dataset("fashion_canvas_boxes")
def _fashion_canvas_boxes(cfg: DataConfig) -> Dataset:
    """Detection: the fashion_canvas canvases with the boxes of their visible garments (10 classes, 10k/2k)."""
    from .canvas import load_canvas_boxes

    return load_canvas_boxes(cfg)


@register_dataset("fashion_edges")
def _fashion_edges(cfg: DataConfig) -> Dataset:
    """Image-to-image: each Fashion-MNIST garment (target) from its Canny edge map (input), 60k/10k."""
    from .edges import load_edges_dataset

    return load_edges_dataset(cfg)


@register_dataset("fashion_mnist_edges")
def _fashion_mnist_edges(cfg: DataConfig) -> Dataset:
    """Paired inputs: each Fashion-MNIST garment and its Canny edge map (a derived modality), 10 classes, 60k/10k."""
    from .edges import load_paired_edges

    return load_paired_edges(cfg)


@register_dataset("coco_folder")
def _coco_folder(cfg: DataConfig) -> Dataset:
    """Detection, your own data in the COCO format: data.root with train.json, test.json and the images."""
    from .coco import load_coco_folder

    return load_coco_folder(cfg)


@register_dataset("seg_folder")
def _seg_folder(cfg: DataConfig) -> Dataset:
    """Segmentation, your own images and PNG masks: data.root with images/ and masks/ (or a VOC tree)."""
    from .masks import load_mask_folder

    return load_mask_folder(cfg)


@register_dataset("austen")
def _austen(cfg: DataConfig) -> Dataset:
    """Text: which of Jane Austen's six novels a 50-word passage is from (by chapter); r-cran-janeaustenr."""
    from .text import load_austen

    return load_austen(cfg)


@register_dataset("text_folder")
def _text_folder(cfg: DataConfig) -> Dataset:
    """Text, your own: data.root with train.csv and test.csv (or .jsonl), a text and a label column."""
    from .text import load_text_folder

    return load_text_folder(cfg)


@register_dataset("folder")
def _folder(cfg: DataConfig) -> Dataset:
    """Your own images: data.root with one sub-folder per class (optionally under train/ and test/)."""
    from .folder import load_folder_dataset

    return load_folder_dataset(cfg)


def load_dataset(cfg: DataConfig) -> Dataset:
    return DATASETS.get(cfg.name)(cfg)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


@dataclass
class Loaders:
    dataset: Dataset
    train: TrainLoader  # BatchLoader, or the reference DataLoaderPipeline
    val: BatchLoader | None
    test: BatchLoader

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape


def split_train_val(data: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Deterministic split of a training set: the same seed always gives the same validation set."""
    n_val = int(round(val_fraction * len(data)))
    if n_val == 0:
        return data, None
    generator = torch.Generator().manual_seed(10_007 + seed)
    if data.groups is not None:  # whole groups, in a random order, until they hold n_val samples
        names, group_of = data.groups.unique(return_inverse=True)
        order = torch.randperm(len(names), generator=generator)
        sizes = torch.bincount(group_of, minlength=len(names))[order]
        chosen = order[:int((sizes.cumsum(0) < n_val).sum()) + 1]
        is_val = torch.isin(group_of, chosen)
        return data.subset(torch.nonzero(~is_val).flatten()), data.subset(torch.nonzero(is_val).flatten())
    perm = torch.randperm(len(data), generator=generator)
    return data.subset(perm[n_val:].sort().values), data.subset(perm[:n_val].sort().values)


def memory_bytes(device: torch.device | str) -> int | None:
    """Total memory of ``device`` (a CUDA device's, or this machine's RAM), or None if unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def describe_inputs(ds: Dataset) -> str:
    """One sample's inputs for messages: ``[1, 28, 28]``, or the structure of several inputs with dtypes."""
    spec = ds.input_shape
    return batch_protocol.signature(spec) if batch_protocol.structured(spec) else str(list(spec))


def check_batch_memory(batch_size: int, ds: Dataset, device: torch.device | str) -> None:
    """Refuse, before anything runs, a batch whose float inputs alone take more than an eighth of the
    device's memory (the activations of a network are many times its input): a huge ``image_size`` or
    batch would otherwise end in an out-of-memory kill, with no message."""
    total = memory_bytes(device)
    spec = ds.input_shape
    per_sample = (sum(t[0].numel() for t in batch_protocol.tensors(spec)) if batch_protocol.structured(spec)
                  else math.prod(spec))
    need = batch_size * per_sample * 4
    if total is not None and need > total // 8:
        raise ConfigError(f"a batch of {batch_size} inputs of {describe_inputs(ds)} "
                          f"is {need / 2**30:.1f} GiB as floats, more than an eighth of the "
                          f"{total / 2**30:.0f} GiB of {torch.device(device).type} memory: lower data.batch_size or "
                          "data.image_size")


def build_loaders(cfg: DataConfig, seed: int, device: torch.device | str = "cpu",
                  dataset: Dataset | None = None, rank: int = 0, world_size: int = 1,
                  channels_last: bool = False) -> Loaders:
    """Train / validation / test loaders. ``data.batch_size`` is the global batch: with ``world_size``
    processes each trains on its share; validation and test sets are sharded across them."""
    ds = dataset or load_dataset(cfg)
    if cfg.train_file:
        from .synthetic import with_train_file

        ds = with_train_file(ds, cfg.train_file)
    if ds.kind != "image":
        image_only = (("mean", cfg.mean, None), ("cutout", cfg.cutout, 0), ("pipeline", cfg.pipeline, "memory"))
        for key, value, off in image_only:
            if value != off:
                raise ConfigError(f"data.{key}: {ds.name} holds {ds.kind} inputs {describe_inputs(ds)}, not images; "
                                  "normalisation, augmentation and the reference image pipeline apply to images (give "
                                  "your features already standardised)")
    if cfg.mean is not None:
        if len(cfg.mean) != ds.in_channels:
            raise ConfigError(f"data.mean and data.std have {len(cfg.mean)} values; {ds.name} has {ds.in_channels} "
                              "channel(s)")
        ds = replace(ds, mean=tuple(cfg.mean), std=tuple(cfg.std))
    check_batch_memory(cfg.batch_size, ds, device)
    train, val = split_train_val(ds.train, cfg.val_fraction, seed)
    if cfg.limit_train is not None:
        train = train.subset(torch.arange(min(cfg.limit_train, len(train))))
    if len(train) == 0:
        raise ConfigError(f"data.val_fraction {cfg.val_fraction} leaves no training images ({ds.name} has "
                          f"{len(ds.train)} before the split): lower it")
    common = {"mean": ds.mean, "std": ds.std, "device": device, "num_workers": cfg.num_workers,
              "channels_last": channels_last}
    shard = {"rank": rank, "world_size": world_size}  # the in-memory loader only (the other is refused above)
    aug = {"crop_padding": ds.crop_padding, "flip": ds.flip, "cutout": cfg.cutout} if cfg.augment else {}
    if cfg.pipeline == "dataloader" and ds.train.labels.dim() > 1:
        raise ConfigError(f"data.pipeline=dataloader: {ds.name} has masks; the reference pipeline moves images only "
                          "(use the default memory pipeline)")
    if cfg.pipeline == "dataloader":
        if cfg.replay_views or cfg.views > 1:
            raise ConfigError("data.replay_views and data.views need the memory pipeline (data.pipeline=memory)")
        if world_size > 1:
            raise ConfigError("data.pipeline=dataloader is the single-process reference pipeline; "
                              "use the default memory pipeline with torchrun")
        if ds.train.images is None:
            raise ConfigError("data.pipeline=dataloader applies to in-memory datasets; folder datasets "
                              "already read through a DataLoader")
        from .reference import DataLoaderPipeline

        train_loader = DataLoaderPipeline(train, cfg.batch_size, shuffle=True, seed=seed, drop_last=True,
                                          **aug, **common)
    else:
        train_loader = BatchLoader(train, cfg.batch_size, shuffle=True, seed=seed, drop_last=True, **aug,
                                   replay_views=cfg.replay_views, views=cfg.views, **common, **shard,
                                   scale=ds.scale if cfg.augment else None)
    return Loaders(
        ds,
        train_loader,
        BatchLoader(val, cfg.eval_batch_size, **common, **shard) if val is not None else None,
        BatchLoader(ds.test, cfg.eval_batch_size, **common, **shard),
    )


__all__ = ["DATASETS", "Dataset", "ImageSet", "BatchLoader", "Loaders", "TrainLoader", "build_loaders", "load_dataset",
           "list_datasets", "register_dataset", "split_train_val"]
