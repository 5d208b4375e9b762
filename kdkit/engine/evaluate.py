"""Evaluation of a network on a loader, with the metrics of the run's task."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..atomic import write_atomic
from ..batch import call, to_device
from ..errors import OutputError
from ..features import pick_logits
from ..tasks import Task, create_task
from .cache import array_checksum, weights_digest


class TeacherOutputs:
    """The teachers' mean output on each evaluation batch, kept after its first computation and looked up
    at every later evaluation of the same loader (a run evaluates its validation split every epoch).

    Exact: the teachers are frozen and in eval mode, and an evaluation loader gives the same, unaugmented
    inputs for the same sample indices; a batch is looked up only under the identical index list it was
    stored under (a loader that yields no indices, such as a plain DataLoader, is always computed). At most
    ``limit_bytes`` are kept (dense outputs past it are computed each time). With ``keep=False`` nothing is
    kept: the plain teachers of :func:`evaluate`'s callers.

    ``store``: a folder in which a loader's outputs, once every sample's has been computed, are written
    (float32, exact) under a digest of the teachers' weights, the loader's inputs and batch size, and the
    device; a later run with the same digest (another trial of a sweep, another student of the same
    teacher) reads them instead of running the teachers (``train.teacher_cache.store: disk`` sets it)."""

    def __init__(self, teachers: Sequence[torch.nn.Module], keep: bool = True, limit_bytes: int = 256 * 2**20,
                 store: str | Path | None = None):
        self.teachers, self.keep, self.limit = teachers, keep, limit_bytes  # the live list (compiled in place)
        self._stored: dict[int, tuple[Any, dict[bytes, torch.Tensor]]] = {}  # id(loader) -> (loader, by indices)
        self.nbytes = 0
        self.store = Path(store) if store is not None else None
        self._disk: dict[int, _Stored] = {}  # id(loader) -> its outputs on disk, read or being gathered

    def __bool__(self) -> bool:
        return bool(self.teachers)

    def __call__(self, loader, x, idx: torch.Tensor | None, autocast: Callable) -> torch.Tensor:
        disk = self._on_disk(loader, x, autocast) if self.keep and idx is not None else None
        if disk is not None and disk.rows is not None and disk.complete:
            return torch.from_numpy(disk.rows[idx.cpu().numpy()]).to(x.device)
        stored = self._stored.setdefault(id(loader), (loader, {}))[1] if self.keep and idx is not None else None
        key = idx.cpu().numpy().tobytes() if stored is not None else b""
        if stored is not None and key in stored:
            return stored[key]
        with autocast():
            out = torch.stack([call(t, x).float() for t in self.teachers]).mean(0)
        if stored is not None and self.nbytes + out.nbytes <= self.limit:
            stored[key] = out
            self.nbytes += out.nbytes
            if disk is not None:
                disk.add(idx, out, self.limit)
        return out

    def _on_disk(self, loader, x, autocast: Callable) -> _Stored | None:
        """The on-disk record of ``loader``'s outputs (None without a store, or for a loader that cannot
        say what its inputs are)."""
        if self.store is None or not hasattr(loader, "fingerprint") or not hasattr(loader, "data"):
            return None
        if id(loader) not in self._disk:
            h = weights_digest(self.teachers)
            h.update(json.dumps({"loader": loader.fingerprint(), "batch": getattr(loader, "batch_size", None),
                                 "n": len(loader.data), "device": x.device.type,
                                 "autocast": autocast is not nullcontext}, sort_keys=True).encode())
            self._disk[id(loader)] = _Stored(self.store / h.hexdigest()[:16], h.hexdigest(), len(loader.data))
        return self._disk[id(loader)]


class _Stored:
    """One loader's teacher outputs in ``folder`` (``outputs.npy`` + ``meta.json``): read when a complete,
    matching, unaltered copy is there (nothing is unpickled, links are not followed); else gathered batch
    by batch and written, atomically, once every sample's output has been computed."""

    def __init__(self, folder: Path, digest: str, n: int):
        self.folder, self.digest, self.n = folder, digest, n
        self.rows: np.ndarray | None = None
        self.seen: np.ndarray | None = None
        self.complete = self._read()

    def _read(self) -> bool:
        meta_file, array_file = self.folder / "meta.json", self.folder / "outputs.npy"
        if any(p.is_symlink() or not p.is_file() for p in (meta_file, array_file)) or meta_file.stat().st_size > 4096:
            return False
        try:
            meta = json.loads(meta_file.read_text())
            rows = np.load(array_file, allow_pickle=False)
        except (ValueError, OSError, EOFError, UnicodeDecodeError):
            return False
        if (not isinstance(meta, dict) or meta.get("fingerprint") != self.digest or rows.dtype != np.float32
                or rows.ndim < 1 or len(rows) != self.n or meta.get("checksum") != array_checksum(rows)):
            return False
        self.rows = rows
        return True

    def add(self, idx: torch.Tensor, out: torch.Tensor, limit: int) -> None:
        """Keep the outputs of samples ``idx``; write the whole set once every sample has one."""
        if self.complete:
            return
        if self.rows is None:
            if self.n * out[0].numel() * 4 > limit:
                self.complete = True  # too large to keep: computed each time, as in memory
                return
            self.rows = np.zeros((self.n, *out.shape[1:]), np.float32)
            self.seen = np.zeros(self.n, bool)
        where = idx.cpu().numpy()
        self.rows[where] = out.detach().cpu().numpy()
        self.seen[where] = True
        if self.seen.all():
            self.complete = True
            rows, self.rows = self.rows, None  # this run looks them up in memory from here
            meta = json.dumps({"fingerprint": self.digest, "shape": list(rows.shape), "checksum": array_checksum(rows)})
            try:
                if self.folder.is_symlink():
                    return
                write_atomic(self.folder / "outputs.npy", lambda f: np.save(f, rows, allow_pickle=False))
                write_atomic(self.folder / "meta.json", lambda f: f.write(meta.encode()))
            except OutputError:
                pass  # a full or read-only disk: this run goes on computing; a later one tries again


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, teachers: Sequence[torch.nn.Module] | TeacherOutputs = (),
             autocast: Callable = nullcontext, dist_info: distributed.DistInfo | None = None,
             task: Task | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader``: kdkit's loaders, or any iterable of ``(inputs,
    targets)`` batches such as a torch DataLoader (moved to the model's device; inputs as :mod:`kdkit.batch`
    says: a tensor, a tuple of tensors or a dict of tensors). Classification: top-1 /
    top-5 accuracy in %, mean cross-entropy, and with teachers the % agreement of the prediction with the
    teachers' mean-logit prediction (``teachers``: the frozen modules, or a :class:`TeacherOutputs` that
    keeps their outputs between calls). Distributed: each rank evaluates its shard and the counts are summed
    over ranks. Counts stay on the device until the end."""
    from .rebuild import load_network

    task = task or create_task()
    task.prepare(load_network)
    if not isinstance(teachers, TeacherOutputs):
        teachers = TeacherOutputs(teachers, keep=False)
    was_training = model.training
    model.eval()
    counts, records, seen = None, [], 0
    rank, world = (dist_info.rank, dist_info.world_size) if dist_info is not None and dist_info.enabled else (0, 1)
    device = next((p.device for p in model.parameters()), None)
    for batch in loader:
        x, y, idx = task.split_batch(batch)
        if device is not None:  # a plain DataLoader's batches are on the CPU
            x, y = to_device(x, device), to_device(y, device)
        if seen == 0:
            task.bind(model, x)
        with autocast():
            output = pick_logits(call(model, x)).float()  # a plain model may return a tuple or dict
        t_output = teachers(loader, x, idx, autocast) if teachers else None
        if task.gathered:  # images keyed by sample index; a plain loader's by its rank's strided share
            keys = idx if idx is not None else (seen + torch.arange(len(output))) * world + rank
            records.append(task.eval_records(output, y, keys))
        else:
            batch_counts = task.eval_counts(output, y, t_output)
            attacked = task.attack_counts(model, x, y, getattr(loader, "mean", None), getattr(loader, "std", None))
            if attacked is not None:
                batch_counts = torch.cat([batch_counts, attacked.to(batch_counts.device)])
            counts = batch_counts if counts is None else counts + batch_counts
        seen += len(output)
    model.train(was_training)
    if task.gathered:
        rows = torch.cat(records) if records else task.empty_records().to(device or "cpu")
        if dist_info is not None:
            rows, = distributed.gather_batches(rows)
        return task.metrics(rows, with_teacher=bool(teachers))
    if counts is None:
        counts = task.empty_counts()
    if dist_info is not None:
        counts = distributed.all_reduce(counts, dist_info)
    return task.metrics(counts.tolist(), with_teacher=bool(teachers))


def evaluate_networks(networks: dict[str, torch.nn.Module], loader, prefix: str,
                      teachers: Sequence[torch.nn.Module] | TeacherOutputs = (), autocast: Callable = nullcontext,
                      dist_info: distributed.DistInfo | None = None, task: Task | None = None) -> dict[str, float]:
    """Metrics of several named networks: ``<prefix>/<metric>`` for ``student``, ``<prefix>/<net>/<metric>``
    for the others; a branched network (:class:`~kdkit.models.branch.Branched`) also gets each branch's
    (trunk + that branch) as ``.../branch<k>/<metric>``; with several networks, their ensemble (mean
    logits) as ``<prefix>/ensemble/<metric>``. The student is the network deployed by default."""
    from ..models.branch import Branched, LeafView

    out = {}
    for net, model in networks.items():
        key = prefix if net == "student" else f"{prefix}/{net}"
        out.update({f"{key}/{k}": v for k, v in evaluate(model, loader, teachers, autocast, dist_info, task).items()})
        if isinstance(model, Branched):
            for b, path in enumerate(model.leaves()):
                metrics = evaluate(LeafView(model, path), loader, teachers, autocast, dist_info, task)
                out.update({f"{key}/branch{b}/{k}": v for k, v in metrics.items()})
    if len(networks) > 1:
        ensemble = MeanLogits(list(networks.values()))
        out.update({f"{prefix}/ensemble/{k}": v for k, v in
                    evaluate(ensemble, loader, teachers, autocast, dist_info, task).items()})
    return out


class MeanLogits(torch.nn.Module):
    """The mean output of several networks (sharing their modules; eval mode is passed on)."""

    def __init__(self, nets: list[torch.nn.Module]):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.training = all(n.training for n in nets)  # the flag only: the networks keep their modes

    def forward(self, *args, **kwargs):
        return torch.stack([n(*args, **kwargs) for n in self.nets]).mean(0)
