"""Weight sharing, as the model transform ``weight_share``: each convolution and linear layer's weights are
clustered into ``2**bits`` shared values (1-D k-means with linear initialisation), the layer stores an
index per weight and the palette of values, and training fine-tunes the palette (Han, Mao & Dally 2016,
"Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman
Coding", ICLR; their section 3: linear initialisation of the centroids works best, and each centroid's
gradient is the sum of the gradients of the weights that share it).

:class:`SharedWeights` holds ``indices`` (a uint8 buffer, the weight's shape) and ``palette`` (a trainable
parameter of ``2**bits`` values) in place of the layer's weight; the weight is ``palette[indices]``, and
each centroid's gradient is the summed gradient of its weights (in double precision, in a fixed order),
the paper's update. The indices are fixed
after clustering. A kdkit checkpoint therefore stores the indices and the palette (one byte per weight, as
uint8: ``bits`` <= 8; the packed size ``bits`` per weight is what :func:`shared_size` reports). ONNX has no
palette weights: ``kdkit export`` writes the weights the palette gives (:func:`dequantize`), which are the
values the network computes with. Train with ``method: kd`` from the unshared network to recover accuracy
(Deep Compression retrains on the labels; KD from the original is kdkit's default recipe here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .transforms import LayerTransform, WrappedLayer, register_transform, replace_module


def kmeans_1d(values: Tensor, k: int, iters: int = 100) -> tuple[Tensor, Tensor]:
    """``(centroids [k], assignment [n])`` of 1-D k-means on ``values`` from centroids spaced linearly between
    the minimum and maximum (Deep Compression's linear initialisation): up to ``iters`` Lloyd iterations
    (stopping when no assignment changes), each value then assigned to its nearest centroid; an empty
    cluster keeps its centroid."""
    v = values.detach().flatten().float()
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float32, device=v.device)

    def nearest(c: Tensor) -> Tensor:
        return torch.bucketize(v, (c[1:] + c[:-1]) / 2)  # 1-D centroids stay sorted

    assign = nearest(centroids)
    for _ in range(iters):
        sums = torch.zeros(k, device=v.device).index_add_(0, assign, v)
        counts = torch.bincount(assign, minlength=k).float()
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new = nearest(centroids)
        if torch.equal(new, assign):
            break
        assign = new
    return centroids, assign


class _Gather(torch.autograd.Function):
    """``palette[indices]`` whose backward sums each centroid's weight gradients with ``bincount``, in a fixed
    order (the backward of indexing accumulates in an order that can change between runs on the CPU, and a
    resumed run must continue bit for bit)."""

    @staticmethod
    def forward(ctx, palette: Tensor, indices: Tensor) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.k = palette.numel()
        return palette[indices]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        summed = torch.bincount(indices.flatten(), weights=grad.flatten().double(), minlength=ctx.k)
        return summed.to(grad.dtype), None


class SharedWeights(WrappedLayer):
    """``layer`` (``nn.Conv2d`` or ``nn.Linear``) whose weight is ``palette[indices]``; its bias unchanged."""

    owner = "weight_share"

    def __init__(self, layer: nn.Conv2d | nn.Linear, bits: int, cluster: bool = True):
        super().__init__()
        w = layer.weight
        k = 2 ** bits
        if cluster:
            palette, assign = kmeans_1d(w, k)
        else:  # rebuilt from a checkpoint: its indices and palette are loaded next
            palette, assign = torch.zeros(k, device=w.device), torch.zeros(w.numel(), dtype=torch.long, device=w.device)
        self.layer = layer
        layer.register_parameter("weight", None)  # the palette and the indices stand for it (self.weight)
        self.palette = nn.Parameter(palette.to(w.dtype))
        self.register_buffer("indices", assign.view(w.shape).to(torch.uint8))

    @property
    def weight(self) -> Tensor:
        return _Gather.apply(self.palette, self.indices.long())

    def forward(self, x: Tensor) -> Tensor:
        m, w = self.layer, self.weight
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Every :class:`SharedWeights` replaced by its plain layer holding the weights the palette gives (for
    ONNX, which has no palette weights); in place."""
    for path, m in [(n, m) for n, m in model.named_modules() if isinstance(m, SharedWeights)]:
        layer = m.layer
        layer.weight = nn.Parameter(m.weight.detach().clone())
        replace_module(model, path, layer)
    return model


def plain(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy with plain layers (:func:`dequantize`) when it has shared weights."""
    if not any(isinstance(m, SharedWeights) for m in model.modules()):
        return model
    import copy

    return dequantize(copy.deepcopy(model))


def shared_size(model: nn.Module) -> dict[str, int]:
    """Bits of the weights: shared layers at ``bits`` per index plus a 32-bit palette, every other parameter
    and buffer at 32 bits; against every weight at 32 bits."""
    shared = [m for m in model.modules() if isinstance(m, SharedWeights)]
    index_bits = sum(m.indices.numel() * max(1, (m.palette.numel() - 1).bit_length()) for m in shared)
    own = {id(m.indices) for m in shared} | {id(m.palette) for m in shared}
    rest = sum(t.numel() for t in [*model.parameters(), *model.buffers()]
               if id(t) not in own and t.is_floating_point())
    plain = rest + sum(m.indices.numel() for m in shared)
    return {"shared_weights": sum(m.indices.numel() for m in shared),
            "size_bits": index_bits + 32 * sum(m.palette.numel() for m in shared) + 32 * rest,
            "size_bits_fp32": 32 * plain}


@register_transform
@dataclass
class WeightShare(LayerTransform):
    """Each convolution and linear layer's weights clustered into ``2**bits`` shared values (k-means), the
    palette fine-tuned (Deep Compression, Han et al. 2016); see :mod:`kdkit.weight_share`."""

    name = "weight_share"
    bits: int = 4
    ignore: list[str] = field(default_factory=list)  # module paths left unshared

    def __post_init__(self) -> None:
        if type(self.bits) is not int or not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer from 1 to 8 (indices are stored as uint8), got {self.bits!r}")

    def targets(self, model: nn.Module) -> list[str]:
        names = {n for n, _ in model.named_modules()}
        missing = [p for p in self.ignore if p not in names]
        if missing:
            raise ConfigError(f"weight_share: ignore names {missing[0]!r}, which is not a module of the network")
        paths = [n for n, m in model.named_modules() if n and n not in self.ignore and (
            isinstance(m, nn.Conv2d | nn.Linear) and isinstance(getattr(m, "weight", None), nn.Parameter))]
        if not paths:
            raise ConfigError(f"weight_share: {type(model).__name__} has no convolution or linear layer to share")
        return paths

    def rewrite(self, model: nn.Module, paths: list[str], fresh: bool) -> nn.Module:
        for path in paths:
            replace_module(model, path, SharedWeights(model.get_submodule(path), self.bits, cluster=fresh))
        return model
