"""Branched networks made from any traceable model by module path: a shared trunk and ``n`` copies of
everything after a split point (ONE, Lan et al. 2018), optionally with a gate that weighs the branches,
and hierarchically, a tree of splits (collaborative learning, Song & Chai 2018), with the gradient from
the branches rescaled at each split (identity forward, gradient times ``1/n`` backward).

The model is traced with ``torch.fx``, with the split modules kept whole, and cut into segments at the
split points; each later segment is copied. Segments keep the original module paths, so the weights of
trunk + branch ``k`` are exactly a state dict of the original model (:func:`branch_state_dict`).
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import Tensor, nn

from .. import batch as batch_protocol
from ..errors import ConfigError


class GradScale(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass
    (backpropagation rescaling at a split shared by ``n`` heads: ``scale = 1/n``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def grad_scale(x: Tensor, scale: float) -> Tensor:
    return GradScale.apply(x, scale)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def split_model(model: nn.Module, points: list[str]) -> list[fx.GraphModule]:
    """Cut ``model`` after each module in ``points`` (in forward order): ``len(points) + 1`` segments,
    each taking the previous one's output. Refused when a later segment also reads an earlier value
    than the split point's output (a split inside a residual block)."""
    names = dict(model.named_modules())
    for p in points:
        if p not in names or not p:
            raise ConfigError(f"branch: no module '{p}' to split at")
    try:
        graph = _Tracer(set(points)).trace(model)
    except Exception as e:  # noqa: BLE001  (tracing runs the model's own code)
        raise ConfigError(f"branch: the model cannot be traced to split it ({type(e).__name__}: {e})") from None
    nodes = list(graph.nodes)
    cuts = []
    for p in points:
        hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == p]
        if len(hits) != 1:
            raise ConfigError(f"branch: '{p}' runs {len(hits)} times in the forward pass; split at a module that "
                              "runs once")
        cuts.append(hits[0])
    if cuts != sorted(cuts):
        raise ConfigError(f"branch: split points {points} are not in forward order")
    bounds = [-1, *cuts, len(nodes) - 1]
    segments = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        seg = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if lo >= 0:
            env[nodes[lo]] = seg.placeholder("x")
        inside = set(nodes[lo + 1: hi + 1])
        for node in nodes[lo + 1: hi + 1]:
            for dep in node.all_input_nodes:
                if dep not in env and dep not in inside:
                    raise ConfigError(f"branch: the layers after '{points[s - 1]}' also read '{dep.name}', computed "
                                      "before it; split at a stage boundary")
            if node.op == "output":
                seg.output(fx.map_arg(node.args[0], env.__getitem__))
            else:
                env[node] = seg.node_copy(node, env.__getitem__)
        if s < len(bounds) - 2:
            seg.output(env[nodes[hi]])
        segments.append(fx.GraphModule(model, seg))
    return segments


def _reinit(module: nn.Module) -> None:
    """A fresh initialisation of a copied branch (the zoo's scheme: Kaiming-normal convolutions, unit/zero
    batch norm, each layer's default for the rest), drawn from the global RNG."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.reset_parameters()
        elif hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()


class Gate(nn.Module):
    """ONE's gate: global average pooling of the trunk's output, then Linear -> BatchNorm -> ReLU ->
    softmax over the ``n`` branches (as the authors' code)."""

    def __init__(self, channels: int, n: int):
        super().__init__()
        self.fc = nn.Linear(channels, n)
        self.bn = nn.BatchNorm1d(n)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).mean(2) if x.dim() > 2 else x
        return torch.relu(self.bn(self.fc(x))).softmax(1)


class Branched(nn.Module):
    """``trunk`` then ``len(heads)`` heads on its output; the output is the heads' mean, or their
    gate-weighted sum. ``rescale`` multiplies the gradient reaching the trunk from the heads by
    ``1/len(heads)``. Each head's output is the output of module ``heads.<k>`` (tap it by that path)."""

    def __init__(self, trunk: nn.Module, heads: list[nn.Module], gate: nn.Module | None = None,
                 rescale: bool = False):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        self.gate = gate
        self.rescale = rescale

    def forward(self, x: Tensor) -> Tensor:
        f = self.trunk(x)
        weights = self.gate(f) if self.gate is not None else None
        if self.rescale:
            f = grad_scale(f, 1.0 / len(self.heads))
        outs = [h(f) for h in self.heads]
        if weights is None:
            return torch.stack(outs).mean(0)
        return sum(weights[:, k: k + 1] * o for k, o in enumerate(outs))

    def leaves(self, prefix: str = "") -> list[str]:
        """Module paths of the leaf heads (``heads.0``, or ``heads.0.heads.1`` in a tree)."""
        out = []
        for k, h in enumerate(self.heads):
            path = f"{prefix}heads.{k}"
            out += h.leaves(path + ".") if isinstance(h, Branched) else [path]
        return out


def _out_channels(module: nn.Module) -> int:
    """The channel count of a segment's output: that of its last layer with one (static, no forward)."""
    for m in reversed(list(module.modules())):
        for attr in ("num_features", "out_channels", "out_features"):
            if isinstance(getattr(m, attr, None), int):
                return getattr(m, attr)
    raise ConfigError("branch: cannot tell the trunk's output channels to size the gate")


def _trunk_channels(trunk: nn.Module, input_shape: tuple[int, ...] | None) -> int:
    """The trunk's output channels: from one forward on zeros when the input shape is known (exact, also
    for concatenating blocks), else from its last layer with a channel count."""
    if input_shape is None:
        return _out_channels(trunk)
    p = next(trunk.parameters(), None)
    was = trunk.training
    with torch.no_grad():
        out = batch_protocol.call(trunk.eval(), batch_protocol.example(input_shape, 2, p.device if p is not None
                                                                       else "cpu"))
    trunk.train(was)
    return out.shape[1]


def branch(model: nn.Module, at: str | list[str], n: int | list[int], gate: bool = False,
           rescale: bool = False, input_shape: tuple[int, ...] | None = None,
           gate_channels: int | None = None) -> Branched:
    """``model`` with everything after ``at`` copied ``n`` times; lists make a tree (``at=[a, b]``,
    ``n=[2, 2]``: a trunk to ``a``, two copies of ``a..b``, each with two copies of the rest). The
    first copy keeps the model's weights, the others are re-initialised. ``gate``: one level only."""
    points = [at] if isinstance(at, str) else list(at)
    counts = [n] if isinstance(n, int) else list(n)
    if len(points) != len(counts) or not points:
        raise ConfigError(f"branch: 'at' ({len(points)}) and 'n' ({len(counts)}) must have one entry per split")
    if any(type(c) is not int or c < 1 or c > 64 for c in counts):
        raise ConfigError(f"branch: each n must be an integer in [1, 64], got {counts}")
    if gate and len(points) != 1:
        raise ConfigError("branch: a gate needs a single split point")
    segments = split_model(model, points)

    def build(level: int, original: bool) -> nn.Module:
        seg = segments[level]
        if not original:
            seg = copy.deepcopy(seg)
            _reinit(seg)
        if level == len(points):
            return seg
        heads = [build(level + 1, original and k == 0) for k in range(counts[level])]
        channels = gate_channels or (_trunk_channels(seg, input_shape) if gate else 0)
        g = Gate(channels, counts[level]) if gate else None
        return Branched(seg, heads, g, rescale)

    return build(0, True)


class LeafView(nn.Module):
    """Trunk + one leaf head of a :class:`Branched` network, as a network of its own (sharing its
    modules): what evaluating or deploying that branch runs."""

    def __init__(self, root: Branched, path: str):
        super().__init__()
        self.root = root
        self.train(root.training)
        self.steps = [int(part.rsplit(".", 1)[-1]) for part in path.split(".heads.")]

    def forward(self, x: Tensor) -> Tensor:
        node: nn.Module = self.root
        for k in self.steps:
            x = node.trunk(x)
            node = node.heads[k]
        return node(x)


def branch_state_dict(model: Branched, leaf: int) -> dict[str, Tensor]:
    """The weights of trunk + the ``leaf``-th leaf head as a state dict of the original (unbranched)
    model: the segments keep the original module paths."""
    out: dict[str, Tensor] = {}
    path = model.leaves()[leaf]
    node: nn.Module = model
    for part in path.split(".heads."):
        ks = part.split(".")
        k = int(ks[-1])
        out.update(node.trunk.state_dict())
        node = node.heads[k]
    out.update(node.state_dict())
    return out
