"""A network a method trains *against* the student, with its own optimiser and its own step: the
discriminator of adversarial distillation and of GAN training.

The contract (``docs/architecture.md``): a method that holds an :class:`Adversary` as a submodule

- computes, in ``losses``, the student's term through the adversary (gradients reach the student; the
  adversary's own parameters do not require grad outside its update, so the student's optimiser, its
  gradient clipping and DistributedDataParallel all leave them out);
- keeps what the adversary's loss needs (detached) and calls :meth:`Adversary.update` from
  ``after_step``: the alternating step, after the student's, on every rank, outside autocast and DDP.
  Under ``torchrun`` the adversary's gradients are averaged over the ranks before its step, so every
  rank's copy stays the same;
- gets its optimiser state in the checkpoint for free: the update is SGD with momentum and weight decay,
  or Adam (the GANs' choice), whose moment buffers are registered buffers of the adversary, saved and
  restored with the method's state dict, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Adversary(nn.Module):
    """``net`` trained on the loss :meth:`update` is given, by SGD (``lr``, ``momentum``, ``weight_decay``;
    the update of ``torch.optim.SGD`` without dampening or Nesterov) or, with ``betas``, by Adam (the
    update of ``torch.optim.Adam``: ``lr``, ``betas``, ``eps`` 1e-8, L2 ``weight_decay``)."""

    def __init__(self, net: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 betas: tuple[float, float] | None = None):
        super().__init__()
        self.net = net
        self.lr, self.momentum, self.weight_decay, self.betas = lr, momentum, weight_decay, betas
        self.net.requires_grad_(False)
        for i, p in enumerate(self.net.parameters()):
            self.register_buffer(f"momentum{i}", torch.zeros_like(p))
            if betas is not None:
                self.register_buffer(f"square{i}", torch.zeros_like(p))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._loss_sum: Tensor | None = None  # the losses of the updates since :meth:`mean_loss` (not saved)
        self._updates = 0

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def update(self, loss_fn: Callable[[], Tensor]) -> Tensor:
        """One step of the adversary on ``loss_fn()`` (computed with its parameters trainable); returns
        the loss, detached."""
        params = list(self.net.parameters())
        self.net.requires_grad_(True)
        try:
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            self.net.requires_grad_(False)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        _average_over_ranks(grads)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if self.weight_decay:
                    g = g.add(p, alpha=self.weight_decay)
                buf = getattr(self, f"momentum{i}")
                if self.betas is not None:
                    self._adam(p, g, buf, getattr(self, f"square{i}"))
                    continue
                if self.momentum:
                    if int(self.steps) == 0:
                        buf.copy_(g)
                    else:
                        buf.mul_(self.momentum).add_(g)
                    g = buf
                p.add_(g, alpha=-self.lr)
            self.steps += 1
        loss = loss.detach()
        self._loss_sum = loss.float() if self._loss_sum is None else self._loss_sum + loss.float()
        self._updates += 1
        return loss

    def mean_loss(self) -> Tensor | None:
        """The mean loss of the updates since the last call (on the device, not read; None when there was
        none), and a fresh count: what the trainer logs for each epoch (``train/<method>/<name>_loss``)."""
        if not self._updates:
            return None
        mean = self._loss_sum / self._updates
        self._loss_sum, self._updates = None, 0
        return mean

    def _adam(self, p: Tensor, g: Tensor, m: Tensor, v: Tensor) -> None:
        (b1, b2), t = self.betas, int(self.steps) + 1
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(1e-8)
        p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** t))


def _average_over_ranks(grads: list[Tensor]) -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
