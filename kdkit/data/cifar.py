"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in the official "python version" batch format.

A batch file is a Python pickle of a dict holding ``data`` (uint8 ``[N, 3072]``, channel-major 32x32
RGB) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). kdkit never runs an arbitrary unpickler:
:class:`_SafeUnpickler` only rebuilds plain containers and numpy arrays, and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetError
from .base import Dataset, ImageSet
from .sources import cache_dir, check_md5, download, extract_tar, missing_error, search_dirs

SOURCES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "archive_md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                  ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                  ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                  ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                  ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
        "meta": ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888", "label_names"),
        "label_key": "labels",
        "num_classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "archive_md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
        "meta": ("meta", "7973b15100ade9c7d40fb424638fde48", "fine_label_names"),
        "label_key": "fine_labels",
        "num_classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a dataset file")


def read_batch(path: Path) -> dict:
    """Load one CIFAR batch file with the restricted unpickler; keys are returned as ``str``."""
    if not path.is_file():
        raise DatasetError(f"{path} is not a file")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except RecursionError:
        raise DatasetError(f"{path} is not a valid CIFAR batch file (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001  (any byte string: unpickling can fail in any way; none runs code)
        detail = " ".join(str(e).split())[:200]
        raise DatasetError(f"{path} is not a valid CIFAR batch file (truncated or corrupt: "
                           f"{type(e).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not a CIFAR batch file (a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _check_batch(batch: dict, label_key: str, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images (uint8 ``[N, 3072]``) and labels (int64 ``[N]``), or a DatasetError naming the
    file and what is wrong."""
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{path}: a CIFAR batch needs 'data' and '{label_key}', "
                           f"has {sorted(map(str, batch))[:8]}")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' is {what}, expected a uint8 array of shape [N, 3072]")
    if isinstance(labels, np.ndarray):
        values = labels
    elif isinstance(labels, list | tuple) and all(
            (type(v) is int and -(2**63) <= v < 2**63) or isinstance(v, np.integer) for v in labels):
        values = np.array(labels, dtype=np.int64) if labels else np.zeros(0, dtype=np.int64)
    else:
        raise DatasetError(f"{path}: '{label_key}' is {type(labels).__name__}"
                           f"{' holding non-integers' if isinstance(labels, list | tuple) else ''}, "
                           "expected a list of integer class indices")
    if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) != len(data):
        raise DatasetError(f"{path}: '{label_key}' must hold one integer per image ({len(data)}), got "
                           f"{values.dtype} of shape {values.shape}")
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise DatasetError(f"{path}: '{label_key}' holds class indices outside [0, {num_classes}) "
                           f"({values.min()} to {values.max()})")
    return data, values.astype(np.int64)


def _find_folder(name: str, cfg: DataConfig) -> Path:
    src = SOURCES[name]
    dirs = search_dirs(name, cfg.root)
    first = src["train"][0][0]
    for d in dirs:
        for cand in (d / src["folder"], d):
            if (cand / first).is_file():
                return cand
            if (cand / first).exists():
                raise DatasetError(f"{cand / first} is not a file")
        archive = d / src["url"].rsplit("/", 1)[1]
        if archive.is_file():
            if cfg.verify:
                check_md5(archive, src["archive_md5"])
            extract_tar(archive, d)
            return d / src["folder"]
    if cfg.download:
        dest = cache_dir() / name
        archive = download(src["url"], dest / src["url"].rsplit("/", 1)[1], src["archive_md5"])
        extract_tar(archive, dest)
        return dest / src["folder"]
    files = [src["folder"] + "/" + f for f, _ in src["train"] + src["test"]]
    raise missing_error(name, files, dirs, [src["url"]], " (downloading is off: data.download=false)")


def _load_split(folder: Path, entries: list[tuple[str, str]], label_key: str, verify: bool,
                num_classes: int) -> ImageSet:
    images, labels = [], []
    for fname, md5 in entries:
        path = folder / fname
        if not path.is_file():
            raise DatasetError(f"{path} is missing (a CIFAR folder needs all of its batch files)")
        if verify:
            check_md5(path, md5)
        data, batch_labels = _check_batch(read_batch(path), label_key, path, num_classes)
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(batch_labels))
    return ImageSet(torch.cat(labels), images=torch.cat(images))


def load_cifar(name: str, cfg: DataConfig) -> Dataset:
    src = SOURCES[name]
    folder = _find_folder(name, cfg)
    train = _load_split(folder, src["train"], src["label_key"], cfg.verify, src["num_classes"])
    test = _load_split(folder, src["test"], src["label_key"], cfg.verify, src["num_classes"])
    classes: list[str] = []
    meta_file, meta_md5, meta_key = src["meta"]
    if (folder / meta_file).is_file():
        if cfg.verify:
            check_md5(folder / meta_file, meta_md5)
        names = read_batch(folder / meta_file).get(meta_key, [])
        if not isinstance(names, list) or not all(isinstance(c, bytes | str) for c in names):
            raise DatasetError(f"{folder / meta_file}: '{meta_key}' must be a list of class names")
        classes = [c.decode("latin1") if isinstance(c, bytes) else c for c in names]
    n = src["num_classes"]  # labels were checked per batch file
    return Dataset(name, train, test, n, 3, (32, 32), src["mean"], src["std"], crop_padding=4, flip=True,
                   classes=classes)


def write_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str = "labels") -> None:
    """Write a batch file in the official format (used by tests to make small CIFAR-shaped data)."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"kdkit", b"data": data, label_key.encode(): list(labels)}, f, protocol=2)
