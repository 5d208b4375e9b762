"""``seg_folder``: a user's segmentation images with PNG masks, the formats MMSegmentation and torchvision
read.

Layouts under ``data.root`` (a mask is the PNG with its image's stem):

- ``train/images/*`` + ``train/masks/*.png`` and ``test/images/*`` + ``test/masks/*.png``;
- ``images/*`` + ``masks/*.png``: a fixed 20% test split is drawn with seed 0;
- a Pascal VOC tree: ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``
  (``val`` is the test split).

Masks are index PNGs: a palette (``P``) image's indices, or a greyscale image's values, are the class ids;
255 is ignored (VOC's object borders). ``classes.txt`` in the root (one name per line) fixes the class
count, and any other id at or above it is refused; without it the count is the largest id + 1. Images
(RGB, or grey when every image is) and masks are resized to ``data.image_size`` squared (masks by nearest
neighbour) and held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetError
from ..tasks.segmentation import IGNORE
from .base import Dataset, ImageSet, channel_stats, colour_mode, root_folder
from .folder import EXTENSIONS


def _pairs(images: Path, masks: Path, stems: list[str] | None = None) -> list[tuple[Path, Path]]:
    if not masks.is_dir():
        raise DatasetError(f"{images} has images but there is no mask folder {masks} (one PNG mask per image, "
                           "same file stem)")
    found = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in EXTENSIONS}
    if stems is not None:
        missing = [s for s in stems if s not in found]
        if missing:
            raise DatasetError(f"{images}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
        found = {s: found[s] for s in stems}
    if not found:
        raise DatasetError(f"{images} has no images ({', '.join(sorted(EXTENSIONS))})")
    pairs = []
    for stem, path in found.items():
        mask = masks / f"{stem}.png"
        if not mask.is_file():
            raise DatasetError(f"image {path} has no mask {mask}")
        pairs.append((path, mask))
    return pairs


def _layout(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation").is_dir():
        lists = root / "ImageSets" / "Segmentation"
        split = {}
        for name, file in (("train", "train.txt"), ("test", "val.txt")):
            if not (lists / file).is_file():
                raise DatasetError(f"{root} looks like a VOC tree but has no {lists / file}")
            stems = [s.strip() for s in (lists / file).read_text().splitlines() if s.strip()]
            split[name] = _pairs(root / "JPEGImages", root / "SegmentationClass", stems)
        return split
    if (root / "train" / "images").is_dir():
        if not (root / "test" / "images").is_dir():
            raise DatasetError(f"{root} has train/images but no test/images")
        return {s: _pairs(root / s / "images", root / s / "masks") for s in ("train", "test")}
    if (root / "images").is_dir():
        pairs = _pairs(root / "images", root / "masks")
        perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = max(1, round(0.2 * len(pairs)))
        if len(pairs) < 2:
            raise DatasetError(f"{root / 'images'} has one image; a test split needs at least two")
        return {"test": [pairs[i] for i in sorted(perm[:n_test])], "train": [pairs[i] for i in sorted(perm[n_test:])]}
    raise DatasetError(f"{root} has no segmentation layout: expected images/ and masks/, train/ and test/ with "
                       "images/ and masks/ each, or a VOC tree (JPEGImages/, SegmentationClass/, ImageSets/)")


def _read(pairs: list[tuple[Path, Path]], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    xs, ys = [], []
    for image, mask in pairs:
        try:
            with Image.open(image) as im, Image.open(mask) as mk:
                if im.size != mk.size:
                    raise DatasetError(f"mask {mask} is {mk.size[0]}x{mk.size[1]} but its image {image} is "
                                       f"{im.size[0]}x{im.size[1]}")
                if mk.mode not in ("P", "L", "I", "I;16"):
                    raise DatasetError(f"mask {mask} is a {mk.mode} image; masks are index PNGs (palette or "
                                       "greyscale values = class ids, 255 = ignore), not colour pictures")
                x = np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)
                y = np.asarray(mk.resize((size, size), Image.NEAREST))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read {image} or {mask}: {e}") from None
        if y.max(initial=0) > IGNORE:
            raise DatasetError(f"mask {mask} has class id {int(y.max())}; ids are 0-254, 255 = ignore")
        xs.append(x[:, :, None] if x.ndim == 2 else x)
        ys.append(y.astype(np.uint8))
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(ys))


def _classes(root: Path, masks: list[torch.Tensor]) -> list[str]:
    ids = torch.cat([m.flatten() for m in masks])
    top = int(ids[ids != IGNORE].max()) if (ids != IGNORE).any() else 0
    if (root / "classes.txt").is_file():
        names = [s.strip() for s in (root / "classes.txt").read_text().splitlines() if s.strip()]
        if top >= len(names):
            raise DatasetError(f"a mask under {root} has class id {top}, but classes.txt names {len(names)} classes "
                               f"(ids 0-{len(names) - 1}, 255 = ignore)")
        return names
    return [str(i) for i in range(top + 1)]


def load_mask_folder(cfg: DataConfig) -> Dataset:
    root = root_folder(cfg.root, "seg_folder", "images and masks")
    split = _layout(root)
    mode = colour_mode(p for pairs in split.values() for p, _ in pairs)
    (xtr, ytr), (xte, yte) = (_read(split[s], cfg.image_size, mode) for s in ("train", "test"))
    classes = _classes(root, [ytr, yte])
    mean, std = channel_stats(xtr)
    return Dataset("seg_folder", ImageSet(ytr, images=xtr), ImageSet(yte, images=xte), num_classes=len(classes),
                   in_channels=xtr.shape[1], image_size=(cfg.image_size, cfg.image_size), mean=mean, std=std,
                   crop_padding=cfg.image_size // 8, flip=True, scale=(0.75, 1.25), classes=classes)
