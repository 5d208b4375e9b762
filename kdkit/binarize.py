"""Binary networks, as the model transform ``binarize``: the inner convolution and linear layers of any
network compute with 1-bit activations and 1-bit weights, trained by KD from the full-precision network
(ReActNet: Liu, Shen, Savvides & Cheng 2020, "ReActNet: Towards Precise Binary Neural Network with
Generalized Activation Functions", ECCV; its code: ``liuzechun/ReActNet``).

Each binarized layer (:class:`BinaryLayer`) wraps the original ``nn.Conv2d`` / ``nn.Linear``:

- **activations**: ReActNet's RSign: a learnable shift per input channel, then ``sign``. The backward pass
  uses Bi-Real Net's piecewise-quadratic approximation of ``sign`` (Liu et al. 2018): gradient
  ``2 + 2x`` on ``[-1, 0)``, ``2 - 2x`` on ``[0, 1)``, 0 outside;
- **weights**: ``sign(w)`` times one scale per output channel, the mean ``|w|`` of that channel (XNOR-Net's
  scale, as ReActNet computes it; not trained). The gradient passes straight through to the real weights
  where ``|w| <= 1`` (the clipped identity), and the real weights are what the optimizer updates.

The first and the last of the network's convolution/linear layers stay in full precision (they see the
image and give the logits: ReActNet and Bi-Real Net keep them so); ``keep`` names others to leave.
ReActNet's RPReLU (learnable shifts around a PReLU after each block) is not added: the transform keeps each
network's own activations, so it works on any network; the RSign shift learns where each layer's input is
cut, which after a ReLU is the threshold that makes ``sign`` informative.

ReActNet trains in two steps, with the KL divergence to the full-precision teacher's softmax as the only loss
(kdkit's ``kd`` with ``alpha: 1.0``, ``temperature: 1.0``): step 1 binarizes the activations only
(``weights: false``), step 2 starts from step 1's weights and binarizes both. Applied to a network that is
binarized already (step 2 initialised from step 1's checkpoint), the transform changes the settings of its
binary layers instead of wrapping them again. ``configs/pipelines/fashion_mnist_binarize.yaml`` runs the two
steps. :func:`binary_costs` gives the theoretical size and operations (a binary multiply-accumulate counted
as 1/64 of a floating-point one, as ReActNet and Bi-Real Net count them). Exported to ONNX as ``Sign`` and
ordinary convolutions of the scaled signs (the values a 1-bit kernel would compute, not its speed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .transforms import LayerTransform, WrappedLayer, register_transform, replace_module

BIT_OPS_PER_FLOP = 64  # ReActNet / Bi-Real Net: OPs = BOPs / 64 + FLOPs


def binary_sign(x: Tensor) -> Tensor:
    """``sign(x)`` forward; in training, gradients of Bi-Real Net's piecewise-quadratic approximation."""
    out = torch.sign(x)
    if not torch.is_grad_enabled() or not x.requires_grad:
        return out
    clipped = x.clamp(-1.0, 1.0)
    approx = 2 * clipped - clipped * clipped.abs()  # 2x + x^2 below 0, 2x - x^2 above, +-1 outside
    return out.detach() - approx.detach() + approx


def binary_weight(w: Tensor) -> Tensor:
    """``sign(w)`` scaled per output channel by the channel's mean ``|w|`` (the scale not trained); the
    gradient reaches ``w`` straight through where ``|w| <= 1``."""
    scale = w.detach().abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))
    binary = scale * torch.sign(w.detach())
    if not torch.is_grad_enabled() or not w.requires_grad:
        return binary
    clipped = w.clamp(-1.0, 1.0)
    return binary - clipped.detach() + clipped


class BinaryLayer(WrappedLayer):
    """``layer`` (``nn.Conv2d`` or ``nn.Linear``) computing on binary inputs (a learnable shift per input
    channel, then :func:`binary_sign`) and, with ``weights``, with binary weights (:func:`binary_weight`)."""

    owner = "binarize"

    def __init__(self, layer: nn.Conv2d | nn.Linear, activations: bool = True, weights: bool = True):
        super().__init__()
        self.layer = layer
        self.activations, self.weights = activations, weights
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        self.shift = nn.Parameter(torch.zeros(channels, device=layer.weight.device, dtype=layer.weight.dtype))

    def extra_repr(self) -> str:
        return f"activations={self.activations}, weights={self.weights}"

    def forward(self, x: Tensor) -> Tensor:
        m = self.layer
        if self.activations:
            shift = self.shift.view(1, -1, 1, 1) if isinstance(m, nn.Conv2d) else self.shift
            x = binary_sign(x + shift)
        w = binary_weight(m.weight) if self.weights else m.weight
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution/linear layer (a :class:`BinaryLayer` counts as its layer), in module order."""
    inner = {id(m.layer) for m in model.modules() if isinstance(m, BinaryLayer)}
    return [(n, m) for n, m in model.named_modules()
            if n and (isinstance(m, BinaryLayer) or isinstance(m, nn.Conv2d | nn.Linear) and id(m) not in inner)]


@register_transform
@dataclass
class Binarize(LayerTransform):
    """1-bit activations (RSign) and weights (scaled sign) in every convolution and linear layer but the first,
    the last and ``keep``, with straight-through gradients; see :mod:`kdkit.binarize`."""

    name = "binarize"
    fits = (nn.Conv2d, nn.Linear, BinaryLayer)
    activations: bool = True
    weights: bool = True  # false: ReActNet's step 1 (binary activations, real weights)
    keep: list[str] = field(default_factory=list)  # more module paths kept in full precision

    def __post_init__(self) -> None:
        if not (self.activations or self.weights):
            raise ValueError("binarize with neither activations nor weights changes nothing: set one of them")

    def targets(self, model: nn.Module) -> list[str]:
        found = _layers(model)
        if not found:
            raise ConfigError(f"binarize: {type(model).__name__} has no convolution or linear layer to binarize")
        names = {n for n, _ in model.named_modules()}
        missing = [p for p in self.keep if p not in names]
        if missing:
            raise ConfigError(f"binarize: keep names {missing[0]!r}, which is not a module of the network")
        picked = [n for n, _ in found[1:-1] if n not in self.keep]
        if not picked:
            raise ConfigError(f"binarize: nothing to binarize in {type(model).__name__}: its convolution and linear "
                              f"layers ({', '.join(n for n, _ in found)[:200]}) are the first and the last, kept in "
                              "full precision, or named in keep")
        return picked

    def rewrite(self, model: nn.Module, paths: list[str], fresh: bool) -> nn.Module:
        for path in paths:
            m = model.get_submodule(path)
            if isinstance(m, BinaryLayer):  # binarized already (step 2 from step 1): new settings
                m.activations, m.weights = self.activations, self.weights
            else:
                replace_module(model, path, BinaryLayer(m, self.activations, self.weights))
        return model


@torch.no_grad()
def binary_costs(model: nn.Module, example: Tensor) -> dict[str, float]:
    """The theoretical cost of a (possibly) binarized network on ``example`` (one batch): its parameters and
    size with 1-bit weights in the binary layers (one 32-bit scale per output channel, computed from them,
    not stored, so not counted) against all 32-bit; its multiply-accumulates, split into binary ones (binary
    activations and weights) and floating-point ones, and ReActNet's OPs = BOPs / 64 + FLOPs, against the
    full-precision network's MACs."""
    macs: dict[nn.Module, float] = {}

    def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        m = module.layer if isinstance(module, BinaryLayer) else module
        per_out = m.weight[0].numel()  # in_channels/groups * kernel (conv), in_features (linear)
        macs[module] = output.numel() / output.shape[0] * per_out

    layers = [m for _, m in _layers(model)]
    hooks = [m.register_forward_hook(count) for m in layers]
    was = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    binary = [m for m in layers if isinstance(m, BinaryLayer)]
    one_bit = sum(m.layer.weight.numel() for m in binary if m.weights)
    params = sum(p.numel() for p in model.parameters())
    bops = sum(macs.get(m, 0.0) for m in binary if m.weights and m.activations)
    total = sum(macs.values())
    return {"params": params, "binary_weights": one_bit, "size_bits": 32 * (params - one_bit) + one_bit,
            "size_bits_fp32": 32 * params, "macs": total, "bops": bops, "flops": total - bops,
            "ops": (total - bops) + bops / BIT_OPS_PER_FLOP}
