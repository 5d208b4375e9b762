"""Evaluation of a network on a loader, with the metrics of the run's task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from .. import distributed
from ..batch import call, to_device
from ..features import pick_logits
from ..tasks import Task, create_task


class TeacherOutputs:
    """The teachers' mean output on each evaluation batch, kept after its first computation and looked up
    at every later evaluation of the same loader (a run evaluates its validation split every epoch).

    Exact: the teachers are frozen and in eval mode, and an evaluation loader gives the same, unaugmented
    inputs for the same sample indices; a batch is looked up only under the identical index list it was
    stored under (a loader that yields no indices, such as a plain DataLoader, is always computed). At most
    ``limit_bytes`` are kept (dense outputs past it are computed each time). With ``keep=False`` nothing is
    kept: the plain teachers of :func:`evaluate`'s callers."""

    def __init__(self, teachers: Sequence[torch.nn.Module], keep: bool = True, limit_bytes: int = 256 * 2**20):
        self.teachers, self.keep, self.limit = teachers, keep, limit_bytes  # the live list (compiled in place)
        self._stored: dict[int, tuple[Any, dict[bytes, torch.Tensor]]] = {}  # id(loader) -> (loader, by indices)
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self.teachers)

    def __call__(self, loader, x, idx: torch.Tensor | None, autocast: Callable) -> torch.Tensor:
        stored = self._stored.setdefault(id(loader), (loader, {}))[1] if self.keep and idx is not None else None
        key = idx.cpu().numpy().tobytes() if stored is not None else b""
        if stored is not None and key in stored:
            return stored[key]
        with autocast():
            out = torch.stack([call(t, x).float() for t in self.teachers]).mean(0)
        if stored is not None and self.nbytes + out.nbytes <= self.limit:
            stored[key] = out
            self.nbytes += out.nbytes
        return out


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
