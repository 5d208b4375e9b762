"""Training on synthetic images: ``data.train_file`` replaces a dataset's training split with the images
of a safetensors file (a condensed set from ``kdkit condense``, or images synthesised from a teacher),
while the test split, the classes and the normalisation stay the dataset's own, so that the result is
measured on the real test images and normalised as the real training images were.

The file holds ``images`` (``[N, C, H, W]``, float32 in [0, 1] or uint8) and ``labels`` (int64 ``[N]``),
and in its metadata the dataset it was made for (``dataset``) and how (``made_by``). Written atomically
by :func:`write_train_file`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_atomic
from ..errors import ConfigError
from .base import Dataset, ImageSet


def write_train_file(path: str | Path, images: Tensor, labels: Tensor, meta: dict[str, Any]) -> Path:
    """``images`` (floats in [0, 1] or uint8, ``[N, C, H, W]``) and ``labels`` as a safetensors file with
    ``meta`` (strings) in its metadata, written atomically."""
    from safetensors.torch import save

    data = save({"images": images.detach().cpu().contiguous(), "labels": labels.detach().cpu().long().contiguous()},
                metadata={k: str(v) for k, v in meta.items()})
    return write_atomic(path, lambda f: f.write(data))


def read_train_file(path: str | Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    """``(images, labels, metadata)`` of a file :func:`write_train_file` wrote (or any safetensors file with
    ``images`` and ``labels``); a one-line error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.train_file: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
            if not {"images", "labels"} <= keys:
                raise ConfigError(f"data.train_file: {path} holds {', '.join(sorted(keys)) or 'no tensors'}; it needs "
                                  "'images' [N, C, H, W] and 'labels' [N]")
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"data.train_file: {path} is not a readable safetensors file ({str(e)[:120]})") from None
    return images, labels, meta


def with_train_file(ds: Dataset, path: str | Path) -> Dataset:
    """``ds`` with its training split replaced by the file's images, checked against the dataset."""
    images, labels, meta = read_train_file(path)
    where = f"data.train_file: {path}"
    if ds.kind != "image":
        raise ConfigError(f"{where}: {ds.name} holds {ds.kind} inputs; a training file replaces image datasets' images")
    want = (ds.in_channels, *ds.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ConfigError(f"{where}: images of shape {list(images.shape)}; {ds.name} needs "
                          f"[N, {', '.join(map(str, want))}]")
    if images.dtype != torch.uint8 and not (images.is_floating_point() and images.numel()
                                            and 0.0 <= float(images.min()) and float(images.max()) <= 1.0):
        raise ConfigError(f"{where}: images must be uint8 or floats in [0, 1], got {images.dtype}")
    if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
        raise ConfigError(f"{where}: labels must be integers, one per image (got {list(labels.shape)} for "
                          f"{len(images)} images)")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ds.num_classes):
        raise ConfigError(f"{where}: labels run from {int(labels.min())} to {int(labels.max())}; {ds.name} has "
                          f"{ds.num_classes} classes")
    made_for = meta.get("dataset")
    if made_for is not None and made_for != ds.name:
        raise ConfigError(f"{where} was made for {made_for}, not {ds.name}")
    return replace(ds, train=ImageSet(labels=labels.long(), images=images.float() if images.is_floating_point()
                                      else images))
