"""``coco_folder``: a user's detection data in the COCO format (instances JSON plus an image folder), the
format MMDetection, torchvision's references and most labelling tools read and write.

Layouts under ``data.root``:

- ``train.json`` and ``test.json``, with the images of each under ``train/`` and ``test/`` (or ``images/``,
  or the root itself);
- COCO's own: ``annotations/instances_<train>.json`` and ``annotations/instances_<val>.json`` (the file whose
  name holds "val" is the test split), the images under ``<train>/`` and ``<val>/`` (e.g. ``train2017/``).

A file is read whole and checked before anything is used: the keys ``images``, ``annotations`` and
``categories``; no duplicate image (or category) id; every annotation's image and category known, and its
``bbox`` ``[x, y, w, h]`` four finite numbers of positive size inside its image (a box may overrun the image
by at most one pixel, as some of COCO's own do: it is clipped). Each error names the file and the
annotation's id. Crowd annotations (``iscrowd: 1``) are left out: kdkit does not evaluate ignore regions.

Categories are numbered 0..K-1 in the order of their ids (the test file's categories must be the
training file's). Images (RGB, or grey when every image is) are resized to ``data.image_size`` squared,
their boxes scaled with them, and held in memory; targets are ``[N, M, 5]`` rows (class, x1, y1, x2, y2)
padded with -1 to the most boxes any image has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetError
from .base import Dataset, ImageSet, channel_stats, colour_mode, root_folder

OVERRUN = 1.0  # pixels a box may reach past its image before it is refused (then clipped)


def _files(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """Split -> (annotation file, folders its file names are relative to, in order of preference)."""
    if (root / "train.json").is_file() or (root / "test.json").is_file():
        for s in ("train", "test"):
            if not (root / f"{s}.json").is_file():
                raise DatasetError(f"{root} has {'test' if s == 'train' else 'train'}.json but no {s}.json")
        return {s: (root / f"{s}.json", [root / s, root / "images", root]) for s in ("train", "test")}
    ann = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    val = [p for p in ann if "val" in p.stem]
    train = [p for p in ann if "train" in p.stem]
    if len(val) == 1 and len(train) == 1:
        return {s: (p, [root / p.stem[len("instances_"):], root / "images", root]) for s, p in
                (("train", train[0]), ("test", val[0]))}
    raise DatasetError(f"{root} has no COCO layout: expected train.json and test.json (images under train/ and "
                       "test/), or annotations/instances_<train>.json and annotations/instances_<val>.json "
                       f"(found {', '.join(p.name for p in ann) or 'neither'})")


def read_annotations(path: Path) -> tuple[list[dict], dict[int, list[list[float]]], list[dict]]:
    """The images, each image id's boxes ``[category id, x, y, w, h]`` (crowds left out) and the categories
    of one instances file, checked (see the module's docstring)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable JSON file ({e})") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise DatasetError(f"{path}: a COCO instances file has the lists images, annotations and categories")
    images: dict[int, dict] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{path}: an image entry needs an integer id and a file_name, got {str(im)[:80]}")
        if im["id"] in images:
            raise DatasetError(f"{path}: duplicate image id {im['id']}")
        images[im["id"]] = im
    cats: dict[int, dict] = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise DatasetError(f"{path}: a category needs an integer id, got {str(c)[:80]}")
        if c["id"] in cats:
            raise DatasetError(f"{path}: duplicate category id {c['id']}")
        cats[c["id"]] = c
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    for a in data["annotations"]:
        aid = a.get("id") if isinstance(a, dict) else None
        where = f"{path}: annotation {aid}"
        if not isinstance(a, dict):
            raise DatasetError(f"{path}: an annotation is not an object: {str(a)[:80]}")
        if a.get("image_id") not in images:
            raise DatasetError(f"{where}: image id {a.get('image_id')!r} is not in images")
        if a.get("category_id") not in cats:
            raise DatasetError(f"{where}: category id {a.get('category_id')!r} is not in categories "
                               f"({', '.join(map(str, sorted(cats)))})")
        if a.get("iscrowd", 0):
            continue
        b = a.get("bbox")
        if (not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               and math.isfinite(v) for v in b)):
            raise DatasetError(f"{where}: bbox must be four finite numbers [x, y, width, height], got {b!r}")
        x, y, w, h = (float(v) for v in b)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: bbox {b} has a negative or zero size (width {w}, height {h})")
        im = images[a["image_id"]]
        iw, ih = im.get("width"), im.get("height")
        if isinstance(iw, (int, float)) and isinstance(ih, (int, float)) and (
                x < -OVERRUN or y < -OVERRUN or x + w > iw + OVERRUN or y + h > ih + OVERRUN):
            raise DatasetError(f"{where}: bbox {b} lies outside its image {im['file_name']} ({iw}x{ih})")
        boxes[a["image_id"]].append([a["category_id"], x, y, w, h])
    return list(images.values()), boxes, [cats[i] for i in sorted(cats)]


def _find(im: dict, folders: list[Path]) -> Path | None:
    return next((f / im["file_name"] for f in folders if (f / im["file_name"]).is_file()), None)


def _read_split(parsed, path: Path, folders: list[Path], size: int, mode: str, cat_index: dict[int, int]):
    from PIL import Image, UnidentifiedImageError

    images, boxes, _ = parsed
    if not images:
        raise DatasetError(f"{path}: no images")
    xs, rows = [], []
    for im in images:
        file = _find(im, folders)
        if file is None:
            raise DatasetError(f"{path}: image {im['id']}'s file {im['file_name']} is in none of "
                               f"{', '.join(str(f) for f in folders)}")
        try:
            with Image.open(file) as pic:
                w0, h0 = pic.size
                x = np.asarray(pic.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read {file}: {e}") from None
        if (im.get("width"), im.get("height")) not in ((w0, h0), (None, None)):
            raise DatasetError(f"{path}: image {im['id']} is {im.get('width')}x{im.get('height')} in the file but "
                               f"{file} is {w0}x{h0}")
        xs.append(x[:, :, None] if x.ndim == 2 else x)
        sx, sy = size / w0, size / h0
        r = []
        for c, bx, by, bw, bh in boxes[im["id"]]:
            x1, y1 = max(bx, 0.0) * sx, max(by, 0.0) * sy
            x2, y2 = min(bx + bw, w0) * sx, min(by + bh, h0) * sy
            if x2 - x1 <= 0 or y2 - y1 <= 0:  # refused above when the file states the image's size
                raise DatasetError(f"{path}: a box of image {im['id']} lies outside it ({w0}x{h0})")
            r.append([cat_index[c], x1, y1, x2, y2])
        rows.append(r)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), rows


def _pad(rows: list[list[list[float]]], m: int) -> torch.Tensor:
    out = torch.full((len(rows), m, 5), -1.0)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r)
    return out


def load_coco_folder(cfg: DataConfig) -> Dataset:
    root = root_folder(cfg.root, "coco_folder", "the COCO JSON files and images")
    files = _files(root)
    parsed = {s: read_annotations(files[s][0]) for s in files}
    train_ids, test_ids = ([c["id"] for c in parsed[s][2]] for s in ("train", "test"))
    if train_ids != test_ids:
        raise DatasetError(f"{files['test'][0]}: its categories {test_ids} are not the training file's {train_ids}")
    cat_index = {c: i for i, c in enumerate(train_ids)}

    found = [_find(im, files[s][1]) for s in files for im in parsed[s][0]]
    mode = colour_mode(f for f in found if f is not None)  # a missing file is reported when its split is read
    (xtr, rtr), (xte, rte) = (_read_split(parsed[s], *files[s], cfg.image_size, mode, cat_index)
                              for s in ("train", "test"))
    m = max(1, max(len(r) for r in rtr + rte))
    mean, std = channel_stats(xtr)
    return Dataset("coco_folder", ImageSet(_pad(rtr, m), images=xtr), ImageSet(_pad(rte, m), images=xte),
                   num_classes=len(train_ids), in_channels=xtr.shape[1], image_size=(cfg.image_size, cfg.image_size),
                   mean=mean, std=std, crop_padding=cfg.image_size // 8, flip=True, scale=(0.75, 1.25),
                   classes=[str(c.get("name", c["id"])) for c in parsed["train"][2]])
