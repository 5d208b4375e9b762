"""``fashion_canvas``: a segmentation set built, deterministically, from the real Fashion-MNIST images.

Each canvas (64x64, grey) holds 1 to 4 garments pasted at random positions and sizes (sides 20 to 44
pixels, resized from 28 with antialiasing); a garment's pixels are those above ``THRESHOLD`` after
resizing, and later garments cover earlier ones, so the mask is exact: class 0 the background, class
``1 + c`` the pixels of Fashion-MNIST class ``c`` (11 classes). Training canvases are built from the
training split only, test canvases from the test split only; the validation split is carved from the
training canvases as for every dataset. The numbers come from fixed seeds and ``VERSION`` (the loader's
fingerprint covers the bytes, so a teacher cache or a checkpoint check sees any change).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from .base import Dataset, ImageSet, channel_stats

VERSION = 1
SIZE = 64
TRAIN_CANVASES, TEST_CANVASES = 10_000, 2_000
SIDES = np.arange(20, 45, 4)  # pasted garment sides, 0.7x to 1.6x the original 28 pixels
THRESHOLD = 32  # a resized garment pixel above this (of 255) is the garment's
MAX_ITEMS = 4
MIN_VISIBLE = 0.25  # detection: an item with less than this share of its pixels visible has no box


def make_canvases(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int, size: int = SIZE,
                  max_items: int = MAX_ITEMS, boxes: bool = False) -> tuple[torch.Tensor, ...]:
    """``count`` canvases ``uint8 [count, 1, size, size]`` and their masks ``uint8 [count, size, size]`` from
    ``images`` ``uint8 [N, 1, h, w]`` with class ids ``labels`` ``[N]`` (the mask holds ``1 + label``); with
    ``boxes``, also each canvas's boxes ``float32 [count, max_items, 5]`` (see :func:`visible_boxes`)."""
    rng = np.random.default_rng([VERSION, seed])
    n_items = rng.integers(1, max_items + 1, count)
    total = int(n_items.sum())
    src = rng.integers(0, len(images), total)
    sides = rng.choice(SIDES[SIDES <= size], total)
    rows = (rng.random(total) * (size - sides + 1)).astype(np.int64)
    cols = (rng.random(total) * (size - sides + 1)).astype(np.int64)
    pasted: list[np.ndarray | None] = [None] * total
    for side in np.unique(sides):  # resize every garment of one size at once
        which = np.flatnonzero(sides == side)
        batch = images[torch.from_numpy(src[which])].float()
        small = F.interpolate(batch, size=(int(side), int(side)), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
        for i, item in zip(which, small):
            pasted[i] = item
    canvas = np.zeros((count, size, size), np.uint8)
    mask = np.zeros((count, size, size), np.uint8)
    classes = labels.numpy()[src] + 1
    starts = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    box = np.full((count, max_items, 5), -1.0, np.float32)
    for c in range(count):
        owner = np.full((size, size), -1, np.int64)  # which item each pixel shows
        for i in range(starts[c], starts[c] + n_items[c]):  # in order: a later garment covers earlier ones
            item, r, q, s = pasted[i], rows[i], cols[i], sides[i]
            on = item > THRESHOLD
            canvas[c, r:r + s, q:q + s][on] = item[on]
            mask[c, r:r + s, q:q + s][on] = classes[i]
            owner[r:r + s, q:q + s][on] = i
        if boxes:
            items = range(starts[c], starts[c] + n_items[c])
            box[c] = visible_boxes(owner, items, [int((pasted[i] > THRESHOLD).sum()) for i in items], classes - 1,
                                   max_items)
    out = torch.from_numpy(canvas).unsqueeze(1), torch.from_numpy(mask)
    return (*out, torch.from_numpy(box)) if boxes else out


def visible_boxes(owner: np.ndarray, items, pixels: list[int], labels: np.ndarray, max_items: int) -> np.ndarray:
    """Rows ``(class, x1, y1, x2, y2)`` of the items whose visible pixels (where ``owner`` names them) are at
    least ``MIN_VISIBLE`` of their ``pixels``: the tight box of those pixels (``x2`` one past the last
    column); the rest of the ``max_items`` rows -1."""
    out = np.full((max_items, 5), -1.0, np.float32)
    n = 0
    for i, total in zip(items, pixels):
        ys, xs = np.nonzero(owner == i)
        if total == 0 or len(ys) < MIN_VISIBLE * total:
            continue
        out[n] = (labels[i], xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        n += 1
    return out


def load_canvas_dataset(cfg: DataConfig) -> Dataset:
    from .idx import load_idx_dataset

    source = load_idx_dataset("fashion_mnist", cfg)
    train = make_canvases(source.train.images, source.train.labels, TRAIN_CANVASES, seed=0)
    test = make_canvases(source.test.images, source.test.labels, TEST_CANVASES, seed=1)
    mean, std = channel_stats(train[0])
    return Dataset("fashion_canvas", ImageSet(train[1], images=train[0]), ImageSet(test[1], images=test[0]),
                   num_classes=11, in_channels=1, image_size=(SIZE, SIZE), mean=mean, std=std, crop_padding=8,
                   flip=True, scale=(0.75, 1.25), classes=["background", *source.classes])


def load_canvas_boxes(cfg: DataConfig) -> Dataset:
    """The same canvases (same seeds, same pixels) with boxes instead of masks: 10 classes, no background."""
    from .idx import load_idx_dataset

    source = load_idx_dataset("fashion_mnist", cfg)
    train = make_canvases(source.train.images, source.train.labels, TRAIN_CANVASES, seed=0, boxes=True)
    test = make_canvases(source.test.images, source.test.labels, TEST_CANVASES, seed=1, boxes=True)
    mean, std = channel_stats(train[0])
    return Dataset("fashion_canvas_boxes", ImageSet(train[2], images=train[0]), ImageSet(test[2], images=test[0]),
                   num_classes=10, in_channels=1, image_size=(SIZE, SIZE), mean=mean, std=std, crop_padding=8,
                   flip=True, scale=(0.75, 1.25), classes=list(source.classes))
