"""Evaluation of a network on a loader, with the metrics of the run's task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from .. import distributed
from ..batch import call, to_device
from ..features import pick_logits
from ..tasks import Task, create_task


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, teachers: Sequence[torch.nn.Module] = (),
             autocast: Callable = nullcontext, dist_info: distributed.DistInfo | None = None,
             task: Task | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader``: kdkit's loaders, or any iterable of ``(inputs,
    targets)`` batches such as a torch DataLoader (moved to the model's device; inputs as :mod:`kdkit.batch`
    says: a tensor, a tuple of tensors or a dict of tensors). Classification: top-1 /
    top-5 accuracy in %, mean cross-entropy, and with teachers the % agreement of the prediction with the
    teachers' mean-logit prediction. Distributed: each rank evaluates its shard and the counts are summed
    over ranks. Counts stay on the device until the end."""
    from .rebuild import load_network

    task = task or create_task()
    task.prepare(load_network)
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
            t_output = torch.stack([call(t, x).float() for t in teachers]).mean(0) if teachers else None
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
                      teachers: Sequence[torch.nn.Module] = (), autocast: Callable = nullcontext,
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
