"""Teacher output cache: compute the teachers' logits and tapped features once, then look them up.

The teachers are frozen and always in eval mode, so their outputs depend only on the input image. When
every training input repeats exactly, the outputs can be stored once and reused:

- **augmentation off** (``data.augment: false``): one input per sample; the cache is exact;
- **replayed augmentation** (``data.replay_views: R``): each sample has ``R`` fixed augmented views and
  epoch ``e`` shows view ``e % R``; the cache holds ``R`` entries per sample and is exact;
- **fresh random augmentation** (the default) makes new inputs every epoch: nothing can be cached, and
  kdkit refuses rather than serve outputs for the wrong images.

Stored in ``float32`` the looked-up outputs are the computed ones bit for bit; ``bfloat16``/``float16``
halve the memory and are approximate. ``topk: k`` keeps only each sample's ``k`` largest logits and one
number for the rest (the log of their summed ``exp`` spread evenly over them), which keeps the softmax
at T=1 of the top-k classes and the total tail mass exact but flattens the tail: approximate, and meant
for large class counts. ``store: memory`` keeps the cache on the training device (lookups are gathers,
with no host synchronisation); ``store: disk`` writes ``.npy`` memory maps plus ``meta.json`` under
``path`` and reuses them in later runs whose fingerprint (teacher weights, inputs, layers, storage
options) matches, so several students can share one teacher pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import TeacherCacheConfig
from ..data.base import TrainLoader
from ..errors import ConfigError
from ..tasks import Task, create_task
from .run_files import FileLock

LOCK_WAIT_S = 600.0  # how long a run waits for another run's use of a disk cache before giving up
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _np_view(t: Tensor) -> np.ndarray:
    """A numpy view of ``t`` (bfloat16 travels as int16 bits)."""
    t = t.detach().cpu().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _from_np(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class TeacherCache:
    """Stored teacher outputs for ``num_keys`` distinct inputs (see the module docstring)."""

    def __init__(self, cfg: TeacherCacheConfig, num_keys: int, device: torch.device, fingerprint: str,
                 path: Path | None = None, task: Task | None = None):
        self.cfg, self.num_keys, self.device, self.fingerprint = cfg, num_keys, device, fingerprint
        self.task = task or create_task()  # how an output is stored compactly (top-k logits)
        self.dtype = _DTYPES[cfg.dtype]
        root = Path(path) if cfg.store == "disk" and path is not None else None
        if cfg.store == "disk" and root is None:
            raise ConfigError("train.teacher_cache.store=disk needs a path")
        # one folder per fingerprint: runs with other teachers or data never touch each other's files
        self.path = root / fingerprint[:16] if root is not None else None
        self._flock: FileLock | None = None
        self.entries: dict[str, Tensor | np.ndarray] = {}
        self.n_teachers = 0
        self.feature_names: list[list[str]] = []  # [teacher, layer] of each stored feature
        self.complete = False
        self.invalid: str | None = None  # why a stored cache found in ``path`` was not used (it is rebuilt)
        self._layout: dict[str, list[tuple[str, str, torch.dtype]]] | None = None  # output -> its entries
        if self.path is not None:
            for d in (root, self.path):
                if d.exists() and not d.is_dir():
                    raise ConfigError(f"train.teacher_cache.path {d} exists and is not a directory")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"train.teacher_cache.path: cannot create {self.path}: {e.strerror or e}") from None
            self._lock(exclusive=False)  # readers share; filling (below) needs it alone
            self._open_existing()

    # ------------------------------------------------------------------------------------ locking
    def _lock(self, exclusive: bool) -> None:
        """Hold ``.lock`` in the cache folder: shared while a run reads the cache, exclusive while one fills
        it, so that no run rewrites files another is reading. Waits (saying so) up to ``LOCK_WAIT_S``."""
        if self._flock is None:
            self._flock = FileLock(self.path / ".lock")
        def say() -> None:
            print(f"waiting for another run using the teacher cache {self.path}", file=sys.stderr)

        if not self._flock.acquire(exclusive, LOCK_WAIT_S, on_wait=say):
            self.release()
            raise ConfigError(f"the teacher cache {self.path} stayed in use by another run for {LOCK_WAIT_S:.0f} s; "
                              "try again later or use another train.teacher_cache.path")

    def release(self) -> None:
        """Let go of the cache folder (the run ended); its memory maps stay readable."""
        if self._flock is not None:
            self._flock.release()
            self._flock = None

    def __del__(self) -> None:
        self.release()

    # ------------------------------------------------------------------------------------ storage
    def _meta_file(self) -> Path:
        return self.path / "meta.json"

    def _open_existing(self) -> None:
        """Reuse a complete cache in ``path`` if every check passes; otherwise say why in ``self.invalid``
        (``fill`` then rebuilds it). Nothing outside the directory is opened, nothing is unpickled."""
        if not self._meta_file().exists() and not self._meta_file().is_symlink():
            return
        problem = self._load_checked()
        if problem is not None:
            self.invalid = problem
            self.entries.clear()
            self._layout = None
            self.n_teachers, self.feature_names = 0, []
            return
        self.complete = True

    def _np_dtype(self, name: str) -> np.dtype:
        if name.endswith(".indices"):
            return np.dtype(np.int32)
        if name.endswith(".rest"):
            return np.dtype(np.float32)
        return np.dtype(np.int16) if self.dtype == torch.bfloat16 else torch.empty(0, dtype=self.dtype).numpy().dtype

    def _load_checked(self) -> str | None:
        """Open and check the stored cache against its meta.json and this run's fingerprint; the reason it
        cannot be used, or None."""
        meta_file = self._meta_file()
        if meta_file.is_symlink() or not meta_file.is_file() or meta_file.stat().st_size > 1 << 20:
            return "meta.json is not a regular file of a sensible size"
        try:
            meta = json.loads(meta_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            return f"meta.json is not JSON ({type(e).__name__})"
        if not isinstance(meta, dict):
            return "meta.json is not a mapping"
        if meta.get("fingerprint") != self.fingerprint:
            return "it was made for other teachers, inputs, layers or storage options"
        if meta.get("complete") is not True:
            return "its filling was interrupted"
        n, features, entries = meta.get("n_teachers"), meta.get("features"), meta.get("entries")
        sums, shapes = meta.get("checksums"), meta.get("shapes")
        if (type(n) is not int or not 0 <= n <= 1000 or not isinstance(features, list) or not all(
                isinstance(f, list) and len(f) == 2 and all(isinstance(s, str) for s in f) for f in features)
                or meta.get("num_keys") != self.num_keys or not isinstance(sums, dict) or not isinstance(shapes, dict)
                or not isinstance(entries, list) or len(set(map(str, entries))) != len(entries)):
            return "meta.json does not describe a kdkit teacher cache"
        expected = {f"feat{j}" for j in range(len(features))}
        for name in entries:
            if not isinstance(name, str) or not _ENTRY.match(name):
                return f"meta.json names an entry {str(name)[:40]!r} that is not a cache array"
            base = name.split(".")[0]
            if base.startswith("logits") and int(base[6:]) >= n or base.startswith("feat") and name not in expected:
                return f"meta.json lists an unexpected entry {name}"
        for name in entries:
            problem = self._open_entry(name, sums.get(name), shapes.get(name))
            if problem is not None:
                return problem
        self.n_teachers, self.feature_names = n, features
        return None

    def _open_entry(self, name: str, checksum: Any, shape: Any) -> str | None:
        path = self.path / f"{name}.npy"
        if path.is_symlink() or not path.is_file():
            return f"{path.name} is missing or not a regular file"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            return f"{path.name} cannot be read ({' '.join(str(e).split())[:80]})"
        if not isinstance(array, np.ndarray) or array.dtype != self._np_dtype(name):
            return f"{path.name} holds {getattr(array, 'dtype', type(array).__name__)}, expected {self._np_dtype(name)}"
        if not isinstance(shape, list) or list(array.shape) != shape or not shape or shape[0] != self.num_keys:
            return f"{path.name} has shape {list(array.shape)}, expected {shape} with {self.num_keys} rows"
        if array_checksum(array) != checksum:
            return f"{path.name} does not match its checksum (changed since it was written)"
        self.entries[name] = array
        return None

    def _alloc(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        full = (self.num_keys, *shape)
        if self.path is None:
            self.entries[name] = torch.empty(full, dtype=dtype, device=self.device)
        else:
            np_dtype = np.int16 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
            path = self.path / f"{name}.npy"
            path.unlink(missing_ok=True)  # a new file: never write through a link left in its place
            self.entries[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=full)

    def _put(self, name: str, keys: Tensor, value: Tensor) -> None:
        if name not in self.entries:
            self._alloc(name, tuple(value.shape[1:]), value.dtype)
        store = self.entries[name]
        if isinstance(store, Tensor):
            store[keys] = value
        else:
            store[keys.cpu().numpy()] = _np_view(value)

    def _get(self, name: str, keys: Tensor, dtype: torch.dtype) -> Tensor:
        store = self.entries[name]
        if isinstance(store, Tensor):
            return store[keys]
        rows = store[keys.cpu().numpy()]
        return _from_np(rows, dtype).to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------ fill / look up
    def _parts(self, name: str, keys: Tensor) -> dict[str, Tensor]:
        """The stored parts of output ``name`` (the task's compressed form) for these keys. Which entries
        make up which output is worked out once, not at every lookup (a training step's hot path)."""
        if self._layout is None:
            self._layout = {}
            for entry in self.entries:
                base, dot, rest = entry.partition(".")
                dtype = {"indices": torch.int32, "rest": torch.float32}.get(rest, self.dtype)
                self._layout.setdefault(base, []).append((entry, dot + rest, dtype))
        return {suffix: self._get(entry, keys, dtype) for entry, suffix, dtype in self._layout.get(name, [])}

    @torch.no_grad()
    def fill(self, distiller, loader, autocast, progress: bool = True) -> None:
        """Run the teachers once over every distinct training input and store what they produce."""
        if self.complete:
            return
        if self.path is not None:
            self._lock(exclusive=True)  # alone: no other run reads these files while they are rewritten
            self.entries.clear()
            self._open_existing()  # another run may have filled it while this one waited
            if self.complete:
                self._lock(exclusive=False)
                return
            meta = self._meta_file()
            if meta.is_dir() and not meta.is_symlink():
                shutil.rmtree(meta)  # invalid (a directory in meta.json's place): rebuilt below
            elif meta.exists() or meta.is_symlink():
                meta.unlink()  # stale, partial or invalid: rebuilt below
        self.entries.clear()
        self._layout = None
        batches = loader.iter_views()
        steps = loader.num_views * -(-len(loader.data) // loader.batch_size)
        for x, keys in tqdm(batches, total=steps, desc="caching teacher outputs", leave=False,
                            disable=None if progress else True, dynamic_ncols=True):
            with autocast():
                logits, feats = distiller.teacher_outputs(x)
            self.n_teachers = len(logits)
            self.feature_names = [[net, spec] for net, fs in feats.items() for spec in fs]
            for i, lg in enumerate(logits):
                for suffix, v in self.task.compress_output(lg, self.cfg.topk).items():
                    self._put(f"logits{i}{suffix}", keys, v if suffix in (".indices", ".rest") else v.to(self.dtype))
            for j, (net, spec) in enumerate(self.feature_names):
                self._put(f"feat{j}", keys, feats[net][spec].to(self.dtype))
        self.complete = True
        if self.path is not None:
            for store in self.entries.values():
                store.flush()
            meta = {"fingerprint": self.fingerprint, "complete": True, "n_teachers": self.n_teachers,
                    "features": self.feature_names, "entries": sorted(self.entries),
                    "num_keys": self.num_keys,
                    "shapes": {k: list(v.shape) for k, v in self.entries.items()},
                    "checksums": {k: array_checksum(v) for k, v in self.entries.items()}}
            tmp = self._meta_file().with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self._meta_file())  # the cache counts as complete only once this lands
            self._lock(exclusive=False)  # filled: others may read it now

    def lookup(self, keys: Tensor, num_classes: int) -> tuple[list[Tensor], dict[str, dict[str, Tensor]]]:
        """The stored ``(teacher logits list, {teacher: {layer: feature}})`` for the inputs with these keys."""
        meta = {"num_classes": num_classes}
        logits = [self.task.expand_output(self._parts(f"logits{i}", keys), meta) for i in range(self.n_teachers)]
        feats: dict[str, dict[str, Tensor]] = {}
        for j, (net, spec) in enumerate(self.feature_names):
            feats.setdefault(net, {})[spec] = self._get(f"feat{j}", keys, self.dtype).float()
        return logits, feats

    def nbytes(self) -> int:
        return sum(int(e.nbytes) if isinstance(e, np.ndarray) else e.numel() * e.element_size()
                   for e in self.entries.values())


def remove_feature_caches(root: str | Path) -> list[Path]:
    """Delete the disk caches under ``root`` that hold tapped features (gigabytes each, made for one
    method's layers) and that no run is using now (their lock is free); logits-only caches (small, shared
    by every logits method of a teacher) and the evaluation outputs stay. The folders removed."""
    removed = []
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        meta = folder / "meta.json"
        if folder.is_symlink() or not folder.is_dir() or meta.is_symlink() or not meta.is_file():
            continue
        try:
            features = json.loads(meta.read_text()).get("features")
        except (ValueError, UnicodeDecodeError, AttributeError):
            continue
        if not features:
            continue
        lock = FileLock(folder / ".lock")
        try:
            if lock.acquire(True):  # no reader and no filler
                shutil.rmtree(folder)
                removed.append(folder)
        finally:
            lock.release()
    return removed


_ENTRY = re.compile(r"^(logits\d{1,4}(\.(values|indices|rest))?|feat\d{1,5})$")  # the only array names


def array_checksum(array: np.ndarray) -> str:
    """sha256 of an array's bytes, read in blocks (memory maps are not loaded whole)."""
    h = hashlib.sha256()
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    for start in range(0, len(flat), 4096):
        h.update(np.ascontiguousarray(flat[start:start + 4096]).tobytes())
    return h.hexdigest()


def weights_digest(teachers) -> Any:
    """A running sha256 over the teachers' weights (names and values), to extend with the inputs."""
    h = hashlib.sha256()
    for t in teachers:
        for k, v in t.state_dict().items():
            h.update(k.encode())
            h.update(_np_view(v.float() if v.dtype == torch.bfloat16 else v).tobytes())
    return h


def cache_fingerprint(distiller, loader, cfg: TeacherCacheConfig) -> str:
    """A hash of everything the stored outputs depend on."""
    h = weights_digest(distiller.teachers)
    specs = {net: tap.specs for net, tap in distiller.teacher_taps.items()}
    h.update(json.dumps({"specs": specs, "loader": loader.fingerprint(), "dtype": cfg.dtype,
                         "topk": cfg.topk}, sort_keys=True).encode())
    return h.hexdigest()


def build_cache(cfg: TeacherCacheConfig, distiller, loader: TrainLoader, device: torch.device,
                run_dir: Path) -> TeacherCache:
    if not distiller.teachers:
        raise ConfigError("train.teacher_cache is set but no method uses a teacher")
    if loader.num_views < 1:
        raise ConfigError(
            "train.teacher_cache is exact only when every training input repeats: turn augmentation off "
            "(data.augment=false) or replay it (data.replay_views=N); with fresh random augmentation each "
            "epoch the teacher must see each new image")
    n = loader.num_views * len(loader.data)
    path = Path(cfg.path) if cfg.path else run_dir / "teacher_cache"
    return TeacherCache(cfg, n, device, cache_fingerprint(distiller, loader, cfg), path, distiller.task)
