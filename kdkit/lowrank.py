"""Low-rank factorization of linear and convolution layers, as the model transform ``lowrank``:

    model: {name: cnn_medium, checkpoint: runs/teacher/checkpoint.pt,
            transforms: [{name: lowrank, energy: 0.9}]}        # or ratio: 0.5

- ``nn.Linear`` ``W [out, in]`` -> two linear layers through rank ``r`` from the truncated SVD
  ``W ~ U_r S_r V_r^T`` (``sqrt(S)`` split between the factors); a 1x1 convolution likewise, as two 1x1
  convolutions.
- ``nn.Conv2d`` with a k x k kernel -> Tucker-2 (Kim et al. 2016, "Compression of Deep Convolutional
  Neural Networks for Fast and Low Power Mobile Applications"): a 1x1 convolution to ``r_in`` channels,
  the k x k convolution between ``r_in`` and ``r_out`` channels (the core, with the layer's stride,
  padding and dilation), a 1x1 convolution to the output channels (with the bias). The factors are the
  leading singular vectors of the kernel's output- and input-channel unfoldings (HOSVD) refined by a few
  alternating (HOOI) sweeps; the core is the kernel projected onto them.

Ranks: ``ratio`` keeps that fraction of each mode's full rank; ``energy`` keeps the smallest rank whose
singular values hold that fraction of the squared sum. A layer is left alone when its factorization would
not have fewer parameters, and grouped convolutions are not factorized. torch.linalg is enough for this
(no TensorLy dependency): two SVDs per mode and sweep. The ranks are recorded in the checkpoint, and
loading rebuilds the factorized layers before the weights go in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .transforms import Transform, register_transform, replace_module


def choose_rank(singular: Tensor, ratio: float | None, energy: float | None) -> int:
    """The rank to keep of a mode with these singular values (descending)."""
    full = len(singular)
    if ratio is not None:
        return max(1, min(full, math.ceil(ratio * full)))
    power = singular.double() ** 2
    cum = torch.cumsum(power, 0) / power.sum().clamp_min(1e-30)
    return max(1, min(full, int((cum < energy - 1e-12).sum()) + 1))


def svd_factors(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``w [out, in] ~ b @ a`` with ``a [rank, in]`` and ``b [out, rank]`` (truncated SVD)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(w.dtype), (u[:, :rank] * root).to(w.dtype)


def tucker2(w: Tensor, r_out: int, r_in: int, sweeps: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """``w [out, in, kh, kw] ~ core x_0 u_out x_1 u_in``: returns ``u_out [out, r_out]``, ``core [r_out,
    r_in, kh, kw]``, ``u_in [in, r_in]`` (HOSVD, then ``sweeps`` HOOI sweeps)."""
    w = w.double()
    out, cin = w.shape[:2]

    def leading(mat: Tensor, r: int) -> Tensor:
        return torch.linalg.svd(mat, full_matrices=False)[0][:, :r]

    u_out = leading(w.reshape(out, -1), r_out)
    u_in = leading(w.transpose(0, 1).reshape(cin, -1), r_in)
    for _ in range(sweeps):
        t = torch.einsum("oihw,ir->orhw", w, u_in)  # project the input mode, refit the output mode
        u_out = leading(t.reshape(out, -1), r_out)
        t = torch.einsum("oihw,or->irhw", w, u_out)
        u_in = leading(t.reshape(cin, -1), r_in)
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    return u_out, core, u_in


def _conv(cin: int, cout: int, like: nn.Conv2d, kernel: bool, bias: bool) -> nn.Conv2d:
    if kernel:
        return nn.Conv2d(cin, cout, like.kernel_size, like.stride, like.padding, like.dilation, bias=bias,
                         padding_mode=like.padding_mode)
    return nn.Conv2d(cin, cout, 1, bias=bias)


def factorized(layer: nn.Module, ranks: list[int]) -> nn.Sequential:
    """The factorized replacement of ``layer`` with ``ranks`` (weights uninitialised)."""
    if isinstance(layer, nn.Linear):
        (r,) = ranks
        return nn.Sequential(nn.Linear(layer.in_features, r, bias=False),
                             nn.Linear(r, layer.out_features, bias=layer.bias is not None))
    if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid"):
        (r,) = ranks
        return nn.Sequential(_conv(layer.in_channels, r, layer, False, False),
                             _conv(r, layer.out_channels, layer, False, layer.bias is not None))
    r_out, r_in = ranks
    return nn.Sequential(_conv(layer.in_channels, r_in, layer, False, False),
                         _conv(r_in, r_out, layer, True, False),
                         _conv(r_out, layer.out_channels, layer, False, layer.bias is not None))


def _params(layer: nn.Module, ranks: list[int]) -> int:
    return sum(p.numel() for p in factorized(layer, ranks).parameters())


def factorize(layer: nn.Module, ratio: float | None = None, energy: float | None = None,
              ranks: list[int] | None = None) -> tuple[nn.Sequential, list[int]] | None:
    """``layer`` factorized (weights set) and its ranks, or None when it cannot be or would not get
    smaller. ``ranks`` (``[r]``, or ``[r_out, r_in]`` for Tucker-2) overrides the choice."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return None
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        return None
    w = layer.weight.detach()
    two_d = isinstance(layer, nn.Linear) or w.shape[2:] == (1, 1) and layer.stride == (1, 1) and \
        layer.padding in ((0, 0), "valid")
    if ranks is None:
        if two_d:
            s = torch.linalg.svdvals(w.reshape(w.shape[0], -1).double())
            ranks = [choose_rank(s, ratio, energy)]
        else:
            s_out = torch.linalg.svdvals(w.reshape(w.shape[0], -1).double())
            s_in = torch.linalg.svdvals(w.transpose(0, 1).reshape(w.shape[1], -1).double())
            ranks = [choose_rank(s_out, ratio, energy), choose_rank(s_in, ratio, energy)]
        if _params(layer, ranks) >= sum(p.numel() for p in layer.parameters()):
            return None
    new = factorized(layer, ranks).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        bias = layer.bias.detach() if layer.bias is not None else None
        if two_d:
            a, b = svd_factors(w.reshape(w.shape[0], -1), ranks[0])
            new[0].weight.copy_(a.reshape(new[0].weight.shape))
            new[1].weight.copy_(b.reshape(new[1].weight.shape))
        else:
            u_out, core, u_in = tucker2(w, *ranks)
            new[0].weight.copy_(u_in.T.to(w.dtype)[:, :, None, None])
            new[1].weight.copy_(core.to(w.dtype))
            new[2].weight.copy_(u_out.to(w.dtype)[:, :, None, None])
        if bias is not None:
            new[-1].bias.copy_(bias)
    return new, ranks


@register_transform
@dataclass
class LowRank(Transform):
    """Low-rank factorization of every linear and (ungrouped) 2-D convolution layer, by ``ratio`` of each
    mode's rank or by retained ``energy`` (one of the two); see :mod:`kdkit.lowrank`."""

    name = "lowrank"
    rewrites_layers = True
    ratio: float | None = None
    energy: float | None = None
    ignore: list[str] = field(default_factory=list)  # module paths left whole
    skip_first: bool = True  # leave the first convolution (few input channels, little to gain) whole

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.energy is None):
            raise ValueError("give one of ratio (fraction of each mode's rank) or energy (fraction of the squared "
                             "singular values kept)")
        for what, v in (("ratio", self.ratio), ("energy", self.energy)):
            if v is not None and not 0.0 < v <= 1.0:
                raise ValueError(f"{what} must be in (0, 1], got {v}")

    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        names = dict(model.named_modules())
        missing = [p for p in self.ignore if p not in names]
        if missing:
            raise ConfigError(f"lowrank: no module {missing[0]!r} to leave whole")
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and n]
        if self.skip_first:
            convs = [n for n, m in found if isinstance(m, nn.Conv2d)]
            found = [(n, m) for n, m in found if not convs or n != convs[0]]
        return [(n, m) for n, m in found if n not in self.ignore]

    def apply(self, model: nn.Module) -> nn.Module:
        self.ranks: dict[str, list[int]] = {}
        for path, layer in self._layers(model):
            done = factorize(layer, self.ratio, self.energy)
            if done is not None:
                replace_module(model, path, done[0])
                self.ranks[path] = done[1]
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"ranks": dict(getattr(self, "ranks", {}))}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        ranks = structure.get("ranks")
        if not isinstance(ranks, dict):
            raise ConfigError("the recorded ranks are not a mapping")
        names = dict(model.named_modules())
        for path, r in ranks.items():
            layer = names.get(path)
            if not isinstance(layer, nn.Linear | nn.Conv2d) or not isinstance(r, list) or not r or any(
                    type(x) is not int or not 1 <= x <= 1 << 20 for x in r):
                raise ConfigError(f"the recorded factorization of {str(path)[:60]!r} does not fit the model")
            replace_module(model, path, factorized(layer, r))
        return model
