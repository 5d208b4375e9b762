"""What a training step calls: the distiller itself, in DistributedDataParallel under ``torchrun``, and
compiled with ``torch.compile`` when ``train.compile`` (or ``compile_teacher``) asks for it."""

from __future__ import annotations

from typing import Any

import torch

from .. import distributed
from ..config import TrainConfig


def wrap(distiller: torch.nn.Module, t: TrainConfig, plan: list[Any], dist: distributed.DistInfo,
         device: torch.device) -> torch.nn.Module:
    """The module a training step calls (``distiller`` wrapped as ``t`` and the run's ``plan`` say)."""
    model: torch.nn.Module = distiller
    if t.compile != "none" or t.compile_teacher:
        distiller.pin_taps()
    if t.compile_teacher:
        distiller.teachers[:] = [compile_module(m, t) for m in distiller.teachers]
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # a stage that leaves some objectives off or freezes parameters trains only some of them
        staged = len(plan) > 1 or any(s.frozen for s in plan)
        model = DDP(distiller, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=staged)
    if t.compile != "none":
        model = compile_module(model, t)
    return model


def compile_module(module: torch.nn.Module, t: TrainConfig) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"backend": t.compile_backend}
    if t.compile not in ("none", "default") and t.compile_backend == "inductor":
        kwargs["mode"] = t.compile
    return torch.compile(module, **kwargs)
