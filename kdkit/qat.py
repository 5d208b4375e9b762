"""Quantization-aware training, as the model transform ``qat``: every convolution and linear layer runs
with int8 fake quantization while the network trains, so its weights learn to live with int8 rounding;
with a KD objective from the full-precision network this is quantized distillation (Polino, Pascanu &
Alistarh 2018, "Model compression via distillation and quantization").

    model: {name: cnn_medium, checkpoint: runs/teacher/checkpoint.pt, transforms: [{name: qat}]}
    teacher: {name: cnn_medium, checkpoint: runs/teacher/checkpoint.pt}
    method: kd

The fake quantization follows what ONNX Runtime's static int8 (:mod:`kdkit.quantize`) does at inference:
weights symmetric int8 with one scale per output channel (``max |w| / 127``); each layer's input
asymmetric int8 over a range tracked during training (the batch min/max, averaged with ``momentum``).
Rounding passes gradients straight through (``torch.fake_quantize_*``). Deploy with ``kdkit quantize``
on the run's checkpoint: the wrappers are removed and the trained weights are quantized with ranges
calibrated afresh, so the int8 file is what static quantization makes of weights trained for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transforms import Transform, WrappedLayer, register_transform


class FakeQuantized(WrappedLayer):
    """``layer`` (``nn.Conv2d`` or ``nn.Linear``) with int8 fake-quantized weights and input."""

    owner = "qat"

    def __init__(self, layer: nn.Module, momentum: float = 0.1):
        super().__init__()
        self.layer = layer
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def _input(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(self.seen):
                    self.lo.copy_(lo), self.hi.copy_(hi), self.seen.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum), self.hi.lerp_(hi, self.momentum)
        lo, hi = torch.minimum(self.lo, torch.zeros(())), torch.maximum(self.hi, torch.zeros(()))  # 0 exact
        scale = ((hi - lo) / 255.0).clamp_min(1e-8).float()
        zero = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero.reshape(1), -128, 127)

    def _weight(self) -> Tensor:
        w = self.layer.weight
        scale = (w.detach().abs().flatten(1).amax(1) / 127.0).clamp_min(1e-8).float()
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                                      -128, 127)

    def forward(self, x: Tensor) -> Tensor:
        x, w, m = self._input(x), self._weight(), self.layer
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


def wrap(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """Every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` wrapped in :class:`FakeQuantized` (in place)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d | nn.Linear) and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, FakeQuantized(m, momentum))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain layers back in place of their :class:`FakeQuantized` wrappers (in place)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, FakeQuantized):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, m.layer)
    return model


@register_transform
@dataclass
class QAT(Transform):
    """int8 fake quantization of every convolution and linear layer while training; see :mod:`kdkit.qat`."""

    name = "qat"
    rewrites_layers = True
    momentum: float = 0.1  # of the tracked input ranges

    def __post_init__(self) -> None:
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {self.momentum}")

    def apply(self, model: nn.Module) -> nn.Module:
        return wrap(model, self.momentum)
