"""A user's own images: ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (or, without a
``test`` sub-folder, ``ROOT/<class>/*`` or ``ROOT/train/<class>/*``, from which a fixed 20% test split is
drawn with seed 0; a test class without training images is refused). Images are decoded with Pillow,
converted to RGB (or kept greyscale when every image is), and resized to ``data.image_size`` squared.
They are read lazily, through a DataLoader, so a folder may be larger than memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetError
from .base import Dataset, ImageSet, as_labels, channel_stats

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _scan(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders (expected ROOT/<class>/<image files>)")
    paths, labels = [], []
    for i, c in enumerate(classes):
        if not (root / c).is_dir():
            continue
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in EXTENSIONS:
                paths.append(p)
                labels.append(i)
    if not paths:
        raise DatasetError(f"{root} has class folders but no images ({', '.join(sorted(EXTENSIONS))})")
    return paths, labels, classes


def _reader(paths: list[Path], size: int, mode: str):
    from PIL import Image, UnidentifiedImageError

    def read(i: int) -> torch.Tensor:
        try:
            with Image.open(paths[i]) as im:
                im = im.convert(mode).resize((size, size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read image {paths[i]}: {e}") from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    return read


def _mode(paths: list[Path]) -> str:
    from PIL import Image

    for p in paths[:200]:
        try:
            with Image.open(p) as im:
                if im.mode not in ("L", "1", "I;16", "I"):
                    return "RGB"
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read image {p}: {' '.join(str(e).split())[:200]}") from None
    return "L"


def load_folder_dataset(cfg: DataConfig) -> Dataset:
    if not cfg.root:
        raise DatasetError("the folder dataset needs data.root (a folder with one sub-folder per class)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root {root} is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        paths, labels, classes = _scan(root / "train")
        test_classes = sorted(d.name for d in (root / "test").iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = [c for c in test_classes if c not in classes]
        if unknown:
            raise DatasetError(f"{root / 'test'} has class folders that {root / 'train'} lacks: "
                               f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} (a class needs training "
                               "images)")
        tpaths, tlabels, _ = _scan(root / "test", classes)
        if not tpaths:
            raise DatasetError(f"{root / 'test'} holds no images")
    else:  # ROOT/<class>/* (or ROOT/train/<class>/* without test/): a fixed 20% test split
        allp, alll, classes = _scan(root / "train" if (root / "train").is_dir() else root)
        perm = torch.randperm(len(allp), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = int(round(0.2 * len(allp)))
        test_ids, train_ids = sorted(perm[:n_test]), sorted(perm[n_test:])
        paths, labels = [allp[i] for i in train_ids], [alll[i] for i in train_ids]
        tpaths, tlabels = [allp[i] for i in test_ids], [alll[i] for i in test_ids]
    mode = _mode(paths)
    size = cfg.image_size
    train = ImageSet(as_labels(labels), reader=_reader(paths, size, mode))
    test = ImageSet(as_labels(tlabels), reader=_reader(tpaths, size, mode))
    # the normalisation statistics from up to 256 images, and at most 64 Mi values (huge image sizes)
    n = max(1, min(256, len(train), (1 << 26) // (size * size * (1 if mode == "L" else 3))))
    sample = torch.stack([train.reader(i) for i in range(0, len(train), max(1, len(train) // n))[:n]])
    mean, std = channel_stats(sample)
    return Dataset("folder", train, test, len(classes), 1 if mode == "L" else 3, (size, size), mean, std,
                   crop_padding=max(1, size // 8), flip=True, classes=classes)
