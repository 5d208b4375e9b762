"""kdkit's datasets as plain tensors, and plain ``(x, y)`` loaders as a kdkit dataset: the bridge between a
user's own PyTorch code and kdkit's in-memory pipeline.

- :func:`load_tensors`: a dataset's train and test splits as float images in ``[0, 1]`` (``[N, C, H, W]``)
  and int64 labels, the same splits kdkit trains and tests on (to train or check a model of your own);
- :func:`dataset_from_loaders`: any two iterables of ``(inputs, labels)`` batches (torch DataLoaders) read
  once into memory as a :class:`~kdkit.data.base.Dataset` that ``kdkit.from_config(cfg, dataset=...)``
  trains on. Images must be uint8 or floats in ``[0, 1]`` (before normalisation: kdkit normalises with
  ``data.mean``/``data.std``, by default the training images' own statistics); any other input (vectors
  ``[B, D]``, sequences ``[B, T, D]``) is kept in its own dtype and given to the model as it is, and so
  are several inputs: a tuple or dict of tensors per batch (``((ids, mask), y)``, ``({"input_ids": ...,
  "attention_mask": ...}, y)``), passed to the model positionally or as keywords (:mod:`kdkit.batch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import batch as batch_protocol
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


def image_classification(name: str, where: str, root: str | None = None) -> tuple[Dataset, Tensor, Tensor]:
    """``(dataset, mean, std)`` of ``name`` for the commands that work on its images themselves (``kdkit
    condense``, ``kdkit lifelong``): an in-memory image classification set, else a one-line error naming
    ``where``; its per-channel normalisation shaped ``[1, C, 1, 1]``."""
    from ..config import DataConfig
    from ..schema import from_dict
    from . import load_dataset

    ds = load_dataset(from_dict(DataConfig, {"name": name, **({"root": root} if root else {})}, "data"))
    if ds.kind != "image" or ds.train.images is None or ds.train.labels.dim() != 1:
        raise ConfigError(f"{where}: {name} is not an in-memory image classification dataset")
    return ds, torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)


def unit_images(images: Tensor) -> Tensor:
    """Images as floats in [0, 1]: uint8 divided by 255, floats (stored in [0, 1]) as they are."""
    return images.float() if images.is_floating_point() else images.float() / 255.0


def _as_inputs(x: Any, where: str, kind: str) -> Any:
    """One batch's inputs as stored: images ``[B, C, H, W]`` (``[B, H, W]`` gets a channel) as uint8, or
    floats in [0, 1] in their own dtype; other inputs (``kind="tensor"``), one tensor or a tuple or dict of
    them, as they are."""
    if kind == "tensor" and batch_protocol.structured(x):
        if isinstance(x, list):
            x = tuple(x)
        out = batch_protocol.apply(lambda t: _as_inputs(t, where, kind), x)
        if len(batch_protocol.tensors(out)) != len(x) or not all(
                isinstance(v, Tensor) for v in (out.values() if isinstance(out, dict) else out)):
            raise ConfigError(f"{where}: several inputs must be a flat tuple or dict of tensors, got "
                              f"{batch_protocol.signature(x)}")
        batch_protocol.size(out)
        return out
    if not isinstance(x, Tensor):
        raise ConfigError(f"{where}: the inputs are a {type(x).__name__}, not a tensor (a batch is (inputs, "
                          "targets); docs/models.md has the batch protocol)")
    if kind == "tensor":
        if x.dim() < 2 or x.dtype == torch.bool or x.is_complex():
            raise ConfigError(f"{where}: expected a batch of [B, ...] numbers, got {x.dtype}{list(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ConfigError(f"{where}: the inputs hold non-finite values")
        return x
    if x.dim() not in (3, 4):
        raise ConfigError(f"{where}: expected image batches [B, C, H, W] (or [B, H, W]), got {x.dtype}{list(x.shape)} "
                          "(vectors and other inputs: kind='tensor')")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ConfigError(f"{where}: images must be uint8 or floats in [0, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= -1e-6 and hi <= 1 + 1e-6):
        raise ConfigError(f"{where}: float images must be in [0, 1] (before normalisation; kdkit normalises with "
                          f"data.mean/data.std), got values in [{lo:.3g}, {hi:.3g}]; inputs that are not images "
                          "(standardised features): kind='tensor'")
    return x.clamp(0, 1)


def _read(loader: Iterable, where: str, kind: str) -> tuple[ImageSet, str]:
    """The loader's batches in memory, and their kind (``"auto"`` decided by the first batch: 3-D and 4-D
    inputs are images, others tensors); the loader is iterated once."""
    xs, ys = [], []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError(f"{where}: batch {i} is not an (inputs, labels) pair")
        if kind == "auto":
            kind = "image" if isinstance(batch[0], Tensor) and batch[0].dim() in (3, 4) else "tensor"
        xs.append(_as_inputs(batch[0], f"{where} batch {i}", kind))
        ys.append(torch.as_tensor(batch[1]).long().reshape(-1))
        if len(ys[-1]) != batch_protocol.size(xs[-1]):
            raise ConfigError(f"{where} batch {i}: {batch_protocol.size(xs[-1])} inputs but {len(ys[-1])} labels")
    if not xs:
        raise ConfigError(f"{where}: the loader gave no batches")
    forms = sorted({batch_protocol.signature(x) for x in xs})
    if len(forms) > 1:
        raise ConfigError(f"{where}: inputs of several shapes or dtypes {forms[:3]}; make them one form")
    return ImageSet(torch.cat(ys), images=batch_protocol.cat(xs)), kind


def dataset_from_loaders(train: Iterable, test: Iterable, name: str = "custom",
                         classes: Sequence[str] | None = None, crop_padding: int = 0,
                         flip: bool = False, kind: str = "auto") -> Dataset:
    """A kdkit dataset from two ``(inputs, labels)`` loaders, read once into memory (see the module
    docstring). ``kind``: ``"image"`` (``[B, C, H, W]`` or ``[B, H, W]``, uint8 or floats in [0, 1],
    normalised by kdkit), ``"tensor"`` (any other input, e.g. standardised features ``[B, D]``, stored in
    its own dtype and passed on as it is) or ``"auto"`` (2-D or 5-D and more: tensor; 3-D and 4-D: image).
    ``crop_padding``/``flip``: kdkit's training augmentation of images (off by default)."""
    if kind not in ("auto", "image", "tensor"):
        raise ConfigError(f"kind must be 'auto', 'image' or 'tensor', got {kind!r}")
    tr, kind = _read(train, "train loader", kind)
    if kind == "tensor" and (crop_padding or flip):
        raise ConfigError("crop_padding and flip augment images; these inputs are tensors (kind='tensor')")
    te, _ = _read(test, "test loader", kind)
    if batch_protocol.signature(tr.images) != batch_protocol.signature(te.images):
        raise ConfigError(f"train inputs are {batch_protocol.signature(tr.images)}, test inputs "
                          f"{batch_protocol.signature(te.images)}")
    k = int(max(tr.labels.max(), te.labels.max())) + 1
    if min(int(tr.labels.min()), int(te.labels.min())) < 0:
        raise ConfigError("labels must be class indices >= 0")
    if classes is not None and len(classes) < k:
        raise ConfigError(f"{len(classes)} class names for labels up to {k - 1}")
    k = len(classes) if classes is not None else k
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    if batch_protocol.structured(tr.images):  # several inputs: "channels" are the first input's first dimension
        first = batch_protocol.tensors(tr.images)[0]
        return Dataset(name, tr, te, k, first.shape[1] if first.dim() > 1 else 1, (), (), (), classes=names,
                       kind="tensor")
    shape = tuple(tr.images.shape[1:])
    if kind == "tensor":
        return Dataset(name, tr, te, k, shape[0], shape[1:], (), (), classes=names, kind="tensor")
    mean, std = channel_stats(tr.images)
    return Dataset(name, tr, te, k, shape[0], shape[1:], mean, std, crop_padding=crop_padding, flip=flip,
                   classes=names)


__all__ = ["load_tensors", "dataset_from_loaders"]
