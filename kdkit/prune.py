"""Pruning. Structured: whole filters and channels removed from any ``nn.Module`` with Torch-Pruning's
dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023), to a target
fraction of MACs or parameters, as the model transform ``prune``:

    model: {name: cnn_medium, checkpoint: runs/teacher/checkpoint.pt,
            transforms: [{name: prune, ratio: 0.5, by: macs, importance: l2}]}

The result is a smaller dense network: no special kernels, faster wherever its MACs were the cost. The
checkpoint records every pruned layer's channel counts (plain data), and loading rebuilds those shapes
on a fresh zoo model before the weights go in: no pickled module, no ``weights_only=False``
(Torch-Pruning's own advice, ``torch.save(model)``, would need it).

Importance (how channels are ranked, per group of coupled layers): ``l1`` / ``l2``, the norm of the
group's weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets"); ``bn``, the batch-norm scale
(Liu et al. 2017, "Network Slimming"); ``random`` as a baseline. The classifier (the last linear layer)
keeps its outputs, and ``ignore`` lists more module paths to keep whole.

Unstructured (the transform ``sparsify``): the smallest-magnitude weights of every convolution and linear
layer set to zero, globally or per layer (``torch.nn.utils.prune``, Han et al. 2015, "Learning both
Weights and Connections"), the masks kept through the recovery training so pruned weights stay zero.
The network keeps its dense shapes, so it runs exactly as fast as before on dense kernels: sparsity
saves time only with sparse kernels, which kdkit does not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from . import batch as batch_protocol
from .errors import ConfigError
from .transforms import Transform, register_transform

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _importance(name: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "bn": lambda: tp.importance.BNScaleImportance(),
            "random": lambda: tp.importance.RandomImportance()}[name]()


def classifier(model: nn.Module) -> str | None:
    """The path of the last ``nn.Linear`` registered in the model (its classifier, for the zoo's models)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def structured_prune(model: nn.Module, input_shape: tuple[int, ...], ratio: float, by: str = "macs",
                     importance: str = "l2", ignore: list[str] | None = None, steps: int = 16,
                     round_to: int | None = 8) -> dict[str, float]:
    """Remove channels from ``model`` in place until its MACs (or parameters) have fallen by at least
    ``ratio`` (``0 <= ratio < 1``; 0 leaves it unchanged), in up to ``steps`` increments of the channel
    ratio, keeping each pruned layer's channel count a multiple of ``round_to`` (None or 1: any count).
    Returns the counts before and after."""
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prune: ratio must be in [0, 1), got {ratio}")
    names = dict(model.named_modules())
    keep = list(ignore or [])
    head = classifier(model)
    if head is not None and head not in keep:
        keep.append(head)
    missing = [p for p in keep if p not in names]
    if missing:
        raise ConfigError(f"prune: no module {missing[0]!r} to keep whole")
    p = next(model.parameters(), None)
    example = batch_protocol.example(input_shape, 2, p.device if p is not None else "cpu")  # Torch-Pruning takes
    # a tensor, a tuple (positional inputs) or a dict (keywords) as its example inputs, as kdkit.batch does
    was = model.training
    model.eval()
    try:
        macs0, params0 = tp.utils.count_ops_and_params(model, example)
        stats = {"macs_before": float(macs0), "params_before": float(params0)}
        target = (1.0 - ratio) * (macs0 if by == "macs" else params0)
        macs, params = macs0, params0
        if ratio > 0:
            pruner = tp.pruner.MetaPruner(model, example, importance=_importance(importance), pruning_ratio=0.95,
                                          iterative_steps=steps, ignored_layers=[names[k] for k in keep],
                                          round_to=round_to if round_to and round_to > 1 else None)
            for _ in range(steps):
                if (macs if by == "macs" else params) <= target:
                    break
                pruner.step()
                macs, params = tp.utils.count_ops_and_params(model, example)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (tracing runs the model's own code)
        raise ConfigError(f"prune: Torch-Pruning cannot prune this model ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    finally:
        model.train(was)
    now, before = (macs, macs0) if by == "macs" else (params, params0)
    if now > target:
        raise ConfigError(f"prune: {by} fell only to {now / before:.2f} of the original in {steps} steps; "
                          "ask for a smaller ratio")
    stats.update(macs_after=float(macs), params_after=float(params))
    return stats


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel counts of every convolution, linear and batch-norm layer: what rebuilding needs."""
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            out[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, _NORM):
            out[name] = {"num_features": m.num_features}
    return out


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not 1 <= value <= 1 << 20:
        raise ConfigError(f"{what} is not a channel count: {str(value)[:20]!r}")
    return value


def resize_layers(model: nn.Module, shapes: dict[str, Any]) -> nn.Module:
    """Give ``model``'s layers the recorded channel counts (``layer_shapes`` of a pruned model), with
    uninitialised weights of the new shapes for a checkpoint's weights to fill."""
    if not isinstance(shapes, dict):
        raise ConfigError("the recorded layer shapes are not a mapping")
    names = dict(model.named_modules())
    for path, rec in shapes.items():
        m = names.get(path)
        if m is None or not isinstance(rec, dict):
            raise ConfigError(f"the model has no layer {str(path)[:60]!r}")
        if isinstance(m, _CONV):
            cin, cout = _int(rec.get("in_channels"), f"{path}.in_channels"), _int(rec.get("out_channels"), path)
            groups = _int(rec.get("groups"), f"{path}.groups")
            if cin % groups or cout % groups:
                raise ConfigError(f"{path}: {cin} -> {cout} channels cannot form {groups} groups")
            m.in_channels, m.out_channels, m.groups = cin, cout, groups
            m.weight = nn.Parameter(m.weight.new_empty(cout, cin // groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(cout))
        elif isinstance(m, nn.Linear):
            cin, cout = _int(rec.get("in_features"), f"{path}.in_features"), _int(rec.get("out_features"), path)
            m.in_features, m.out_features = cin, cout
            m.weight = nn.Parameter(m.weight.new_empty(cout, cin))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(cout))
        elif isinstance(m, _NORM):
            n = _int(rec.get("num_features"), f"{path}.num_features")
            m.num_features = n
            if m.weight is not None:
                m.weight, m.bias = nn.Parameter(m.weight.new_empty(n)), nn.Parameter(m.bias.new_empty(n))
            if m.running_mean is not None:
                m.running_mean, m.running_var = m.running_mean.new_zeros(n), m.running_var.new_ones(n)
        else:
            raise ConfigError(f"layer {path!r} is a {type(m).__name__}, not a convolution, linear or batch norm")
    return model


@register_transform
@dataclass
class Prune(Transform):
    """Structured pruning to ``ratio`` of the MACs (or parameters, ``by: params``) removed; see
    :mod:`kdkit.prune`."""

    name = "prune"
    rewrites_layers = True
    ratio: float = 0.5
    by: Literal["macs", "params"] = "macs"
    importance: Literal["l1", "l2", "bn", "random"] = "l2"
    ignore: list[str] = field(default_factory=list)  # module paths kept whole (the classifier always is)
    steps: int = 16
    round_to: int = 8  # channel counts kept multiples of this (1: any); see docs/compression.md for why

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in [1, 1000], got {self.steps}")
        if not 1 <= self.round_to <= 1024:
            raise ValueError(f"round_to must be in [1, 1024], got {self.round_to}")

    def apply(self, model: nn.Module) -> nn.Module:
        if self.input_shape is None:
            raise ConfigError("prune needs the input shape (it traces the model)")
        self.stats = structured_prune(model, self.input_shape, self.ratio, self.by, self.importance,
                                      self.ignore, self.steps, self.round_to)
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"layers": layer_shapes(model)}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        return resize_layers(model, structure.get("layers"))


def _prunable(model: nn.Module, ignore: list[str]) -> list[tuple[str, nn.Module]]:
    names = dict(model.named_modules())
    missing = [p for p in ignore if p not in names]
    if missing:
        raise ConfigError(f"sparsify: no module {missing[0]!r} to leave dense")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (*_CONV, nn.Linear)) and n not in ignore]


def sparsity(model: nn.Module) -> float:
    """The fraction of zero weights over every convolution and linear layer (masked ones included)."""
    zeros = total = 0
    for _, m in _prunable(model, []):
        w = m.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


@register_transform
@dataclass
class Sparsify(Transform):
    """Unstructured magnitude pruning of ``ratio`` of the convolution and linear weights (``scope:
    global``, one threshold over all layers; ``layer``, the same fraction in each), the masks kept while
    training; see :mod:`kdkit.prune`. The classifier is pruned too unless listed in ``ignore``."""

    name = "sparsify"
    rewrites_layers = True
    ratio: float = 0.5
    scope: Literal["global", "layer"] = "global"
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")

    def apply(self, model: nn.Module) -> nn.Module:
        from torch.nn.utils import prune as tprune

        layers = _prunable(model, self.ignore)
        if not layers:
            raise ConfigError("sparsify: the model has no convolution or linear layer to prune")
        if self.scope == "global":
            tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                                       amount=self.ratio)
        else:
            for _, m in layers:
                tprune.l1_unstructured(m, "weight", amount=self.ratio)
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"layers": [n for n, m in model.named_modules() if hasattr(m, "weight_mask")]}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        """The masked layers' reparametrisation (``weight_orig``, ``weight_mask``), for the checkpoint's
        weights and masks to load into."""
        from torch.nn.utils import prune as tprune

        names = dict(model.named_modules())
        layers = structure.get("layers")
        if not isinstance(layers, list) or any(not isinstance(n, str) or n not in names for n in layers):
            raise ConfigError(f"the recorded masked layers do not fit the model: {str(layers)[:80]}")
        for n in layers:
            tprune.identity(names[n], "weight")
        return model
