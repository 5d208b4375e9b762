"""kdkit's datasets as plain tensors, and plain ``(x, y)`` loaders as a kdkit dataset: the bridge between a
user's own PyTorch code and kdkit's in-memory pipeline.

- :func:`load_tensors`: a dataset's train and test splits as float images in ``[0, 1]`` (``[N, C, H, W]``)
  and int64 labels, the same splits kdkit trains and tests on (to train or check a model of your own);
- :func:`dataset_from_loaders`: any two iterables of ``(images, labels)`` batches (torch DataLoaders) read
  once into memory as a :class:`~kdkit.data.base.Dataset` that ``kdkit.from_config(cfg, dataset=...)``
  trains on. Images must be uint8 or floats in ``[0, 1]`` (before normalisation: kdkit normalises with
  ``data.mean``/``data.std``, by default the training images' own statistics).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Dataset, ImageSet, channel_stats


def load_tensors(name: str = "digits", **data: Any) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x_train, y_train), (x_test, y_test))`` of dataset ``name`` (``data`` as the config's data
    section: ``root``, ``image_size``, ...); images float32 in ``[0, 1]``, labels int64."""
    from ..config import DataConfig
    from ..schema import from_dict
    from . import load_dataset

    ds = load_dataset(from_dict(DataConfig, {"name": name, **data}, "data"))
    out = []
    for part in (ds.train, ds.test):
        if part.images is None:
            images = torch.stack([part.reader(i) for i in range(len(part))])
        else:
            images = part.images
        out.append((images.float() / 255.0, part.labels.clone()))
    return out[0], out[1]


def _as_uint8(x: Any, where: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        raise ConfigError(f"{where}: expected image batches [B, C, H, W] (or [B, H, W]), got "
                          f"{type(x).__name__}{list(x.shape) if isinstance(x, Tensor) else ''}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ConfigError(f"{where}: images must be uint8 or floats in [0, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ConfigError(f"{where}: float images must be in [0, 1] (before normalisation; kdkit normalises with "
                          f"data.mean/data.std), got values in [{lo:.3g}, {hi:.3g}]")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _read(loader: Iterable, where: str) -> ImageSet:
    xs, ys = [], []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError(f"{where}: batch {i} is not an (images, labels) pair")
        xs.append(_as_uint8(batch[0], f"{where} batch {i}"))
        ys.append(torch.as_tensor(batch[1]).long().reshape(-1))
    if not xs:
        raise ConfigError(f"{where}: the loader gave no batches")
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise ConfigError(f"{where}: images of several shapes {sorted(shapes)[:3]}; resize them to one")
    return ImageSet(torch.cat(ys), images=torch.cat(xs))


def dataset_from_loaders(train: Iterable, test: Iterable, name: str = "custom",
                         classes: Sequence[str] | None = None, crop_padding: int = 0,
                         flip: bool = False) -> Dataset:
    """A kdkit dataset from two ``(images, labels)`` loaders, read once into memory (see the module
    docstring). ``crop_padding``/``flip``: kdkit's training augmentation (off by default)."""
    tr, te = _read(train, "train loader"), _read(test, "test loader")
    if tr.images.shape[1:] != te.images.shape[1:]:
        raise ConfigError(f"train images are {list(tr.images.shape[1:])}, test images {list(te.images.shape[1:])}")
    k = int(max(tr.labels.max(), te.labels.max())) + 1
    if min(int(tr.labels.min()), int(te.labels.min())) < 0:
        raise ConfigError("labels must be class indices >= 0")
    if classes is not None and len(classes) < k:
        raise ConfigError(f"{len(classes)} class names for labels up to {k - 1}")
    k = len(classes) if classes is not None else k
    mean, std = channel_stats(tr.images)
    c, h, w = tr.images.shape[1:]
    return Dataset(name, tr, te, k, c, (h, w), mean, std, crop_padding=crop_padding, flip=flip,
                   classes=list(classes) if classes is not None else [str(i) for i in range(k)])


__all__ = ["load_tensors", "dataset_from_loaders"]
