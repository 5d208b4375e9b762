"""In-memory and lazy image sets, and the description of a loaded dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .. import batch as batch_protocol
from ..errors import DatasetError


@dataclass
class ImageSet:
    """The inputs of a split, in memory or read lazily one by one through ``reader``: images as uint8
    ``[N, C, H, W]`` (or floats in [0, 1]); other inputs (vectors ``[N, D]``, sequences ``[N, T, D]``, token
    ids) in their own dtype, never quantised."""

    labels: Tensor  # int64 [N] class ids; or masks, uint8 [N, H, W] (segmentation: class ids, 255 = ignore)
    images: Any = None  # a tensor [N, ...], or several inputs: a tuple or dict of them (kdkit.batch)
    reader: Callable[[int], Tensor] | None = None  # index -> uint8 [C, H, W]
    # int64 [N]: samples of one group (a text's chapter) stay on one side of the validation split
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.reader is None):
            raise ValueError("an ImageSet holds either images or a reader")
        if self.images is not None and batch_protocol.size(self.images) != len(self.labels):
            raise ValueError(f"{batch_protocol.size(self.images)} inputs but {len(self.labels)} labels")
        if self.groups is not None and len(self.groups) != len(self.labels):
            raise ValueError(f"{len(self.groups)} groups but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> ImageSet:
        groups = self.groups[index] if self.groups is not None else None
        if self.images is not None:
            return ImageSet(self.labels[index], images=batch_protocol.index(self.images, index), groups=groups)
        idx = index.tolist()
        parent = self.reader
        return ImageSet(self.labels[index], reader=lambda i: parent(idx[i]), groups=groups)


@dataclass
class Dataset:
    """A dataset's train and test sets and what the pipeline needs to know about them."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # random-crop padding for augmentation (0: no crop)
    flip: bool = False  # random horizontal flip for augmentation
    scale: tuple[float, float] | None = None  # random zoom range for augmentation (segmentation)
    classes: list[str] = field(default_factory=list)
    # "image": [C, H, W] per sample, normalised with mean/std, augmentable; "tensor": any other shape
    # (in_channels the first dimension, image_size the rest: () for vectors), passed on as stored; "text":
    # input_ids and attention_mask [T] (in_channels the vocabulary size, image_size (T,): kdkit.data.text)
    kind: str = "image"
    # files written beside every run on this dataset (name -> bytes): a text dataset's tokenizer.json
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def noun(self) -> str:
        """What one sample is called in messages."""
        return {"image": "images", "text": "texts"}.get(self.kind, "samples")

    @property
    def input_shape(self) -> Any:
        """One sample's shape, without the batch dimension; for several inputs per sample, an example batch
        of the first two training samples in their structure (what networks are probed and traced on:
        :func:`kdkit.batch.example`)."""
        if self.train.images is not None and batch_protocol.structured(self.train.images):
            return batch_protocol.index(self.train.images, torch.arange(min(2, len(self.train))))
        return (self.in_channels, *self.image_size)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images (uint8, or floats in [0, 1]), on the [0, 1] scale."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / (255.0 if images.dtype == torch.uint8 else 1.0)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-6).tolist())


def root_folder(root: str | None, name: str, holds: str) -> Path:
    """``data.root`` as an existing folder, or a DatasetError saying what dataset ``name`` needs there."""
    if root is None:
        raise DatasetError(f"{name} needs data.root: the folder of {holds}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data.root {path} is not a folder")
    return path


def colour_mode(paths: Iterable[Path]) -> str:
    """``"L"`` when every image file is greyscale, else ``"RGB"`` (what a folder's images are read as)."""
    from PIL import Image

    for path in paths:
        with Image.open(path) as im:
            if im.mode not in ("L", "1", "I;16"):
                return "RGB"
    return "L"


def as_labels(values) -> Tensor:
    return torch.as_tensor(values, dtype=torch.int64)


@runtime_checkable
class TrainLoader(Protocol):
    """What the trainer and the teacher cache use of a training loader. Both pipelines implement it:
    :class:`~kdkit.data.loader.BatchLoader` (in memory, on the device) and
    :class:`~kdkit.data.reference.DataLoaderPipeline` (per-image transforms in DataLoader workers)."""

    data: ImageSet
    batch_size: int
    epoch: int  # epochs started

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of ``(inputs, labels, sample indices)``, on the loader's device."""

    def __len__(self) -> int:
        """Batches per epoch."""

    @property
    def num_views(self) -> int:
        """Distinct inputs per sample over a run: 1 without augmentation, the number of replayed views
        with replayed augmentation, 0 (unbounded) with fresh random augmentation every epoch."""

    def view_keys(self, idx: Tensor) -> Tensor:
        """Keys of the exact inputs of the current epoch's samples ``idx`` (teacher cache lookups)."""

    def iter_views(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Every distinct input once, as ``(inputs, keys)``; only when ``num_views >= 1``."""

    def fingerprint(self) -> dict[str, str]:
        """What determines the inputs, to check a stored teacher cache against."""

    def state_dict(self) -> dict:
        """What resuming at an epoch boundary needs."""

    def check_state(self, state: Any, source: str) -> None:
        """Raise CheckpointError (naming ``source``) if ``state`` cannot be restored; changes nothing."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (checked first with :meth:`check_state`)."""
