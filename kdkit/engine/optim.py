"""The optimizer (one parameter group per trainable network) and the learning rate of each step."""

from __future__ import annotations

import math

import torch

from ..config import RunConfig
from ..methods.stages import PlannedStage


def make_optimizer(cfg: RunConfig, params, device: torch.device | None = None,
                   network_options: dict[str, dict[str, float | None]] | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW; on CUDA the fused implementation (one kernel for all parameters), elsewhere the
    multi-tensor ``foreach`` one. ``params`` is a list of parameters or ``{network: parameters}``; each
    network is a parameter group whose ``lr``/``weight_decay`` may come from ``network_options``
    (``None``: the optimizer's). A group remembers its network (``net``) and its own base rate
    (``net_lr``, ``None`` when it follows ``optim.lr``)."""
    o = cfg.optim
    if not isinstance(params, dict):
        params = {"student": params}
    groups = []
    for net, ps in params.items():
        opts = (network_options or {}).get(net, {})
        wd = opts.get("weight_decay")
        groups.append({"params": [p for p in ps if p.requires_grad], "net": net, "net_lr": opts.get("lr"),
                       "lr": opts.get("lr") or o.lr, "weight_decay": o.weight_decay if wd is None else wd})
    impl = {"fused": True} if device is not None and device.type == "cuda" else {"foreach": True}
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay, **impl)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **impl)


def lr_at(cfg: RunConfig, epoch: int, i: int = 0, steps: int = 1, stage: PlannedStage | None = None,
          horizon: int | None = None, base: float | None = None) -> float:
    """Learning rate for step ``i`` of ``steps`` in ``epoch`` (0-based) of the run.

    ``base`` (default ``optim.lr``) is the rate the schedule scales. In a stage that does not follow the
    schedule (``schedule: false``, the methods' preliminary stages) the rate is constant at ``base``. The
    scheduled stages share one schedule over their ``horizon`` epochs (default ``train.epochs``): a
    linear warm-up that reaches the base rate at the last warm-up step, then step decay at the start of
    each milestone epoch, or a cosine curve over the steps. Without ``stage`` the epoch is the schedule's.
    """
    base, s = (cfg.optim.lr if base is None else base), cfg.schedule
    e = epoch
    if stage is not None:
        if not stage.schedule:
            return base
        e = stage.scheduled_before + (epoch - stage.start)
    horizon = horizon or cfg.train.epochs
    pos = e + i / steps
    if s.warmup_epochs > 0 and pos < s.warmup_epochs:
        return base * min(1.0, (pos + 1 / steps) / s.warmup_epochs)
    if s.name == "step":
        return base * s.gamma ** sum(1 for m in s.milestones if e >= m)
    if s.name == "cosine":
        return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(pos / horizon, 1.0)))
    return base


def group_lrs(cfg: RunConfig, optimizer: torch.optim.Optimizer, epoch: int, i: int, steps: int,
              stage: PlannedStage, horizon: int) -> list[float]:
    """Each parameter group's rate for this step: its network's own base rate, else the stage's, else
    ``optim.lr``, through the schedule."""
    return [lr_at(cfg, epoch, i, steps, stage, horizon, g.get("net_lr") or stage.lr) for g in optimizer.param_groups]
