"""MNIST and Fashion-MNIST from IDX files (LeCun et al.'s format: big-endian header, then raw bytes).

Files may be gzip-compressed or not. Each file is checked for a valid header, a size that matches its
header (a truncated file is an error), and, when ``verify`` is on, its checksum: the md5 of the
official ``.gz`` archive, or the sha256 of the decompressed content (which also accepts a correct copy
that was compressed differently, such as Debian's ``dataset-fashion-mnist`` package).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetError
from .base import Dataset, ImageSet
from .sources import cache_dir, download, file_hash, find_file, missing_error, search_dirs

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")

SOURCES = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"},
        "sha256": {},
        "system": (),
        "classes": [str(i) for i in range(10)],
    },
    "fashion_mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "md5": {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"},
        # sha256 of the decompressed files (measured on Debian's dataset-fashion-mnist package)
        "sha256": {"train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                   "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                   "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                   "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
        "system": ("/usr/share/datasets/fashion-mnist",),
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                    "Bag", "Ankle boot"],
    },
}


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode an IDX byte string into an array, checking the header and the payload size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DatasetError(f"{source} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source} is truncated (incomplete header)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(f"{source} is {what} ({len(data)} bytes, expected {expected} for shape {dims})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


MAX_IDX_BYTES = 1 << 30  # decompressed size bound (a gzip bomb is refused, not inflated)


def read_idx_file(path: Path, md5: str | None = None, sha256: str | None = None) -> np.ndarray:
    """Read a (possibly gzipped) IDX file; verify it when any checksum is given."""
    if not path.is_file():
        raise DatasetError(f"{path} is not a file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = inflate.decompress(raw, MAX_IDX_BYTES)
            if inflate.unconsumed_tail:
                raise DatasetError(f"{path} decompresses to more than {MAX_IDX_BYTES:,} bytes; not a dataset file")
            if not inflate.eof:
                raise EOFError("compressed stream ended early")
        except (EOFError, OSError, zlib.error) as e:
            raise DatasetError(f"{path} is a truncated or corrupt gzip file ({e})") from None
    else:
        data = raw
    if md5 or sha256:
        import hashlib

        ok = (md5 is not None and path.suffix == ".gz" and hashlib.md5(raw).hexdigest() == md5) or (
            sha256 is not None and hashlib.sha256(data).hexdigest() == sha256)
        if not ok:
            raise DatasetError(
                f"{path} fails its checksum: it is corrupt or not the official file; delete it to "
                "download again, or set data.verify=false for a re-packed copy"
            )
    return parse_idx(data, str(path))


def load_idx_dataset(name: str, cfg: DataConfig) -> Dataset:
    src = SOURCES[name]
    dirs = search_dirs(name, cfg.root, src["system"])
    arrays, paths = {}, {}
    for stem in FILES:
        path = find_file(dirs, (stem + ".gz", stem))
        if path is None and cfg.download:
            path = download(src["url"] + stem + ".gz", cache_dir() / name / (stem + ".gz"), src["md5"][stem])
        if path is None:
            raise missing_error(name, [f + ".gz" for f in FILES], dirs, [src["url"] + f + ".gz" for f in FILES],
                                " (downloading is off: data.download=false)")
        md5 = src["md5"].get(stem) if cfg.verify else None
        sha = src["sha256"].get(stem) if cfg.verify else None
        if cfg.verify and path.suffix != ".gz" and sha is None:
            md5 = None  # no published checksum of the uncompressed file: structural checks only
        arrays[stem], paths[stem] = read_idx_file(path, md5, sha), path
    sets = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{name} {split}: images {images.shape} and labels {labels.shape} do not match")
        if images.dtype != np.uint8:
            raise DatasetError(f"{paths[f'{prefix}-images-idx3-ubyte']}: images are {images.dtype}, expected uint8")
        if labels.dtype != np.uint8 or len(labels) and labels.max() >= 10:
            top = labels.max() if len(labels) else "-"
            raise DatasetError(f"{paths[f'{prefix}-labels-idx1-ubyte']}: expected uint8 labels in [0, 10), got "
                               f"{labels.dtype} labels up to {top}")
        sets[split] = ImageSet(torch.from_numpy(labels.astype(np.int64)),
                               images=torch.from_numpy(images.copy()).unsqueeze(1))
    h, w = sets["train"].images.shape[-2:]
    mean, std = {"mnist": ((0.1307,), (0.3081,)), "fashion_mnist": ((0.2860,), (0.3530,))}[name]
    return Dataset(name, sets["train"], sets["test"], 10, 1, (h, w), mean, std,
                   crop_padding=2, flip=name == "fashion_mnist", classes=list(src["classes"]))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` (uint8) in IDX format; used by tests and for exporting subsets."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


__all__ = ["load_idx_dataset", "parse_idx", "read_idx_file", "write_idx", "file_hash"]
