"""In-memory and lazy image sets, and the description of a loaded dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ImageSet:
    """Images as uint8 ``[N, C, H, W]`` in memory, or read lazily one by one through ``reader``."""

    labels: Tensor  # int64 [N]
    images: Tensor | None = None
    reader: Callable[[int], Tensor] | None = None  # index -> uint8 [C, H, W]

    def __post_init__(self) -> None:
        if (self.images is None) == (self.reader is None):
            raise ValueError("an ImageSet holds either images or a reader")
        if self.images is not None and len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> ImageSet:
        if self.images is not None:
            return ImageSet(self.labels[index], images=self.images[index])
        idx = index.tolist()
        parent = self.reader
        return ImageSet(self.labels[index], reader=lambda i: parent(idx[i]))


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
    classes: list[str] = field(default_factory=list)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-6).tolist())


def as_labels(values) -> Tensor:
    return torch.as_tensor(values, dtype=torch.int64)
