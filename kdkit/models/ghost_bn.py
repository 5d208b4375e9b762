"""Ghost batch normalisation: batch-norm statistics over fixed-size groups of a large batch.

Hoffer, Hubara and Soudry, "Train longer, generalize better: closing the generalization gap in large
batch training of neural networks", NeurIPS 2017, section 4: during training, a batch of ``N`` samples is
split into ``N / g`` "ghost" batches of ``g`` samples and each is normalised with its own mean and
variance. The noise that batch norm adds at the small batch size is kept while the optimiser takes the
large step.

Goyal et al., "Accurate, Large Minibatch SGD" (2017), section 2.3, make the same point from the other
side: the linear learning-rate scaling rule keeps the batch-norm batch (the per-worker batch, 32 there)
fixed while the total batch grows, because changing it changes the loss being optimised. On one device,
or with fewer ranks than the batch was scaled by, ghost batch norm is how that is kept: batch 512 with
``g = 64`` normalises exactly like 8 workers of 64.

The modules subclass :class:`torch.nn.BatchNorm1d` / :class:`~torch.nn.BatchNorm2d` with the same
parameters and buffers, so checkpoints load into the plain models, and evaluation (running statistics)
is unchanged. Running statistics are updated once per step with the average of the groups' means and
(unbiased) variances.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "convert_ghost_batch_norm"]


class _GhostMixin:
    group_size: int

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        n = x.shape[0]
        if not self.training or n <= self.group_size:
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        g = self.group_size
        full = (n // g) * g
        if full == n:
            y, mean, var = self._normalise(x.view(n // g, g, *x.shape[1:]))
            y = y.reshape(x.shape)
        else:  # a last, smaller group: normalised on its own, counted as one group
            y1, m1, v1 = self._normalise(x[:full].view(full // g, g, *x.shape[1:]))
            y2, m2, v2 = self._normalise(x[full:].unsqueeze(0))
            y = torch.cat([y1.reshape(full, *x.shape[1:]), y2.reshape(n - full, *x.shape[1:])])
            mean, var = torch.cat([m1, m2]), torch.cat([v1, v2])
        if self.track_running_stats:  # type: ignore[attr-defined]
            self._update_running(mean, var)
        return y

    def _normalise(self, xg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``xg``: (groups, g, C, ...). Returns the normalised groups and each group's mean and unbiased
        variance per channel, (groups, C)."""
        dims = (1, *range(3, xg.dim()))
        xf = xg.float()  # statistics in float32, also under bf16/fp16 autocast (as native batch norm)
        var, mean = torch.var_mean(xf, dim=dims, correction=0, keepdim=True)
        shape = (1, 1, -1) + (1,) * (xg.dim() - 3)
        y = (xf - mean) * torch.rsqrt(var + self.eps)  # type: ignore[attr-defined]
        if self.affine:  # type: ignore[attr-defined]
            y = y * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[attr-defined]
        count = xg[0].numel() // xg.shape[2]
        unbiased = var * (count / max(count - 1, 1))
        return y.to(xg.dtype), mean.flatten(1), unbiased.flatten(1)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor) -> None:
        self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
        m = self.momentum  # type: ignore[attr-defined]
        factor = 1.0 / float(self.num_batches_tracked) if m is None else m  # type: ignore[attr-defined]
        self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype), factor)  # type: ignore[attr-defined]
        self.running_var.lerp_(var.mean(0).to(self.running_var.dtype), factor)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"  # type: ignore[misc]


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """:class:`~torch.nn.BatchNorm1d` whose training statistics come from groups of ``group_size``."""

    def __init__(self, num_features: int, group_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` whose training statistics come from groups of ``group_size``."""

    def __init__(self, num_features: int, group_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size


_GHOST = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d}


def convert_ghost_batch_norm(module: nn.Module, group_size: int) -> nn.Module:
    """Replace every ``BatchNorm1d``/``BatchNorm2d`` under ``module`` (in place; ``module`` itself is
    returned, or its replacement if it is a batch norm) by its ghost version over groups of
    ``group_size``. Parameters and buffers are shared with the originals, so devices, dtypes and
    checkpoint keys stay as they were. Layers that already are ghost batch norms get the new size."""
    if group_size < 2:
        raise ValueError(f"ghost batch norm group size must be >= 2 (batch norm needs 2 samples), got {group_size}")
    if isinstance(module, _GhostMixin):
        module.group_size = group_size
        return module
    cls = _GHOST.get(type(module))
    if cls is not None:
        new = cls(module.num_features, group_size, eps=module.eps, momentum=module.momentum,
                  affine=module.affine, track_running_stats=module.track_running_stats)
        new._parameters = module._parameters  # the same Parameter objects (and optimiser state)
        new._buffers = module._buffers
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_ghost_batch_norm(child, group_size)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
