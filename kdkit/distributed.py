"""Distributed data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m kdkit distill CONFIG`` (and multi-node runs through torchrun's
rendezvous flags) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; kdkit reads
them here. The backend is NCCL when CUDA is available and gloo otherwise. Only the trainable part (the
:class:`~kdkit.methods.Distiller`: student plus method helpers) is wrapped in
``DistributedDataParallel``; the frozen teachers run outside it on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The process's place in a torchrun launch (a single process when not launched by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(info: DistInfo, device_name: str = "auto") -> torch.device:
    """Join the process group (once) and return this rank's device."""
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")


def all_reduce(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over all ranks (``op``: sum, mean or min), as a new tensor; ``t`` itself when not
    distributed."""
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t / info.world_size if op == "mean" else t


def mean_over_ranks(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Each scalar (on the device) averaged over the ranks and read in one transfer; ``{}`` for none."""
    if not values:
        return {}
    return dict(zip(values, all_reduce(torch.stack([v.float() for v in values.values()]), info, "mean").tolist()))


def gather_batches(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor concatenated over the ranks along dimension 0 (rank 0's rows first), without gradient:
    what a method that keeps a memory of past samples enqueues, so that every rank stores the whole
    global batch, in the order a single process would (MoCo's ``concat_all_gather``). Ranks may hold
    different numbers of rows. Outside an initialised process group of several ranks: the tensors as
    they are."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    first = tensors[0]
    sizes = [torch.zeros(1, dtype=torch.long, device=first.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(first)], dtype=torch.long, device=first.device))
    sizes = [int(n) for n in sizes]
    out = []
    for t in tensors:
        t = t.detach().contiguous()
        padded = t.new_zeros((max(sizes), *t.shape[1:]))
        padded[:len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:n] for p, n in zip(parts, sizes)]))
    return tuple(out)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank. DDP does this at the start
    of each forward, so after an epoch's last step each rank still holds its own update."""
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def replicas_identical(module: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (compared through a float64
    fingerprint per tensor: its sum and its sum of squares weighted by position)."""
    if not info.enabled:
        return True
    parts = []
    for t in list(module.parameters()) + list(module.buffers()):
        v = t.detach().double().flatten()
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
        parts.append(torch.stack([v.sum(), (v * v * w).sum()]))
    mine = torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(wait: bool = False) -> None:
    """Leave the process group; with ``wait``, only once every rank got here (a clean finish)."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
