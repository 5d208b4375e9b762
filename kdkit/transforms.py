"""Model transforms: rewrites of a network that the build step applies before feature taps are resolved,
and that checkpoints record so that the same structure is rebuilt on load, from plain data (no pickled
modules, no code execution).

A transform is a dataclass registered by name; its fields are its parameters, validated like a method's
config (``{name: ghost_bn, group_size: 64}`` in a model's ``transforms`` list). It provides

- ``apply(model) -> model``: the rewrite (in place where it can be, the returned model is the one to use);
- ``structure(model) -> dict``: plain data that rebuilding needs beyond the parameters, read after
  ``apply`` and training (for a structurally pruned network, its channel counts); empty by default;
- ``rebuild(model, structure) -> model``: the same structure on a freshly created model, before a
  checkpoint's weights are loaded into it; ``apply`` by default. Only ``structural`` transforms are
  rebuilt on load; the others (ghost batch norm) are recorded, but their weights fit the plain model and
  how it is trained next is the next run's choice.

Ghost batch normalisation is the first transform; pruning, factorization, quantization-aware wrappers and
fusion are meant to be added as new files registering here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import nn

from .errors import CheckpointError, ConfigError
from .models.ghost_bn import convert_ghost_batch_norm
from .registry import Registry
from .schema import from_dict


@dataclass
class Transform:
    name: ClassVar[str] = ""
    structural: ClassVar[bool] = True  # False: weights fit the untransformed model, nothing to rebuild
    rewrites_layers: ClassVar[bool] = False  # True: finds convolution / linear layers and rewrites them
    input_shape: ClassVar[tuple[int, ...] | None] = None  # set by apply_transforms, for transforms that probe

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        return self.apply(model)


TRANSFORMS: Registry[type[Transform]] = Registry("transform")


class WrappedLayer(nn.Module):
    """A convolution or linear layer that transform ``owner`` rewrote around the original (kept as
    ``layer``): binarize's, weight_share's and qat's. A layer-rewriting transform listed after one of these
    would rewrite, or miss, the layer inside and break the wrapper, so :func:`apply_transforms` refuses it."""

    owner: ClassVar[str] = ""


def register_transform(cls: type[Transform]) -> type[Transform]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    TRANSFORMS.add(cls.name, cls)
    return cls


def list_transforms(pattern: str = "*") -> list[str]:
    return TRANSFORMS.names(pattern)


def transform_config(entry: Any, where: str = "transform") -> Transform:
    """Validate one transform entry (``"ghost_bn"`` or ``{"name": "ghost_bn", "group_size": 64}``)."""
    if isinstance(entry, Transform):
        return entry
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where}: expected a transform name or a mapping with 'name', got {entry!r}")
    entry = dict(entry)
    return from_dict(TRANSFORMS.get(str(entry.pop("name"))), entry, where)


def _check_unwrapped(model: nn.Module, name: str) -> None:
    """Refuse layer-rewriting transform ``name`` on a network whose layers another transform has wrapped (its
    own wrappers are its to handle: binarize's second step re-applies over the first's)."""
    wrapped = next(((n, m) for n, m in model.named_modules() if isinstance(m, WrappedLayer) and m.owner != name),
                   None)
    if wrapped is None:
        return
    path, layer = wrapped
    wrapping = {c.owner for c in WrappedLayer.__subclasses__()}  # binarize, weight_share, qat
    raise ConfigError(
        f"model.transforms: {name} cannot follow {layer.owner}, which has rewritten the network's layers ({path} is "
        f"a {type(layer).__name__}): "
        + ("binarize, weight_share and qat each rewrite every layer their own way; use one of them, last"
           if name in wrapping else f"list {name} before {layer.owner}"))


def apply_transforms(model: nn.Module, transforms: list[Transform],
                     input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Apply ``transforms`` in order; returns the model to use (:func:`records` describes the result
    when it is saved). ``input_shape`` (C, H, W) is given to transforms that probe the model."""
    for t in transforms:
        t.input_shape = input_shape
        if t.rewrites_layers:
            _check_unwrapped(model, t.name)
        model = t.apply(model)
    return model


def records(model: nn.Module, transforms: list[Transform]) -> list[dict[str, Any]]:
    """What a checkpoint stores of a transformed model: each transform's name, parameters and structure."""
    return [{"name": t.name, **asdict(t), "structure": t.structure(model)} for t in transforms]


def rebuild_transforms(model: nn.Module, recorded: list[dict[str, Any]], source: str = "checkpoint") -> nn.Module:
    """Give a freshly created ``model`` the structure a checkpoint recorded, so its weights fit."""
    for i, rec in enumerate(recorded):
        rec = dict(rec)
        structure = rec.pop("structure", {}) or {}
        try:
            t = transform_config(rec, f"{source}: transform[{i}]")
        except ConfigError as e:
            raise CheckpointError(f"{e} (recorded in the checkpoint)") from None
        if t.structural:
            if not isinstance(structure, dict):
                raise CheckpointError(f"{source}: transform[{i}] ({t.name}) records a structure that is not a mapping")
            try:
                model = t.rebuild(model, structure)
            except ConfigError as e:  # a record that does not fit the model: the file's fault
                raise CheckpointError(f"{source}: transform[{i}] ({t.name}) cannot be rebuilt: {e}") from None
    return model


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (dotted) in ``model``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


@dataclass
class LayerTransform(Transform):
    """A transform that rewrites some of a network's layers, chosen by ``targets`` and rewritten by
    ``rewrite`` (``fresh``: from the trained layer; else a shell, to be filled by a checkpoint's weights); the
    chosen paths are its recorded structure, and rebuilding rewrites the same ones."""

    fits: ClassVar[tuple[type, ...]] = (nn.Conv2d, nn.Linear)  # what a recorded path may name
    rewrites_layers: ClassVar[bool] = True

    def targets(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def rewrite(self, model: nn.Module, paths: list[str], fresh: bool) -> nn.Module:
        raise NotImplementedError

    def apply(self, model: nn.Module) -> nn.Module:
        self.paths = self.targets(model)
        return self.rewrite(model, self.paths, fresh=True)

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"layers": list(getattr(self, "paths", []))}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        paths, names = structure.get("layers"), dict(model.named_modules())
        if not isinstance(paths, list) or not all(isinstance(p, str) and isinstance(names.get(p), self.fits)
                                                  for p in paths):
            raise ConfigError("the recorded layers do not fit the model")
        self.paths = list(paths)
        return self.rewrite(model, self.paths, fresh=False)


@register_transform
@dataclass
class GhostBatchNorm(Transform):
    """Batch-norm statistics over groups of ``group_size`` samples (Hoffer et al. 2017; see
    :mod:`kdkit.models.ghost_bn`). Parameters and buffers keep the plain batch-norm names, so weights
    load either way; ``train.ghost_batch_size`` is a shorthand that also converts the methods' modules."""

    name = "ghost_bn"
    structural = False  # plain batch-norm parameters and buffers
    group_size: int = 64

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (batch norm needs 2 samples), got {self.group_size}")

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_ghost_batch_norm(model, self.group_size)


@register_transform
@dataclass
class Branch(Transform):
    """Shared trunk and ``n`` branches after module ``at`` (ONE, Lan et al. 2018), optionally gated; lists
    make a tree of splits (collaborative learning, Song & Chai 2018), ``rescale`` scales each split's
    gradient by ``1/n`` (see :mod:`kdkit.models.branch`). The output is the branches' mean (or gated sum);
    each branch's output is module ``heads.<k>`` of the network."""

    name = "branch"
    at: str | list[str] | None = None  # module path(s) to split after; None: the stages before the last
    n: int | list[int] = 3  # branches at each split
    gate: bool = False
    rescale: bool = False

    def __post_init__(self) -> None:
        self.n = [self.n] if isinstance(self.n, int) else list(self.n)
        if self.at is None:
            return  # resolved from the probed stages when applied
        self.at = [self.at] if isinstance(self.at, str) else list(self.at)
        if not self.at or len(self.at) != len(self.n):
            raise ValueError(f"'at' and 'n' need one entry per split point, got {self.at} and {self.n}")
        if any(k < 1 or k > 64 for k in self.n):
            raise ValueError(f"each n must be in [1, 64], got {self.n}")

    def apply(self, model: nn.Module) -> nn.Module:
        from .models.branch import branch

        if self.at is None:  # the len(n) stages before the last, found by probing (recorded resolved)
            from .features import probe

            if self.input_shape is None:
                raise ConfigError("branch: 'at' is needed here (no input shape to find the stages by probing)")
            stages = probe(model, self.input_shape).stages()
            if len(stages) < len(self.n) + 1:
                raise ConfigError(f"branch: the model has {len(stages)} stages, too few for {len(self.n)} "
                                  "split(s) before the last; give 'at'")
            self.at = stages[-len(self.n) - 1:-1]
        return branch(model, self.at, self.n, self.gate, self.rescale, self.input_shape)

    def structure(self, model: nn.Module) -> dict[str, Any]:
        gate = getattr(model, "gate", None)
        return {"gate_channels": gate.fc.in_features} if gate is not None else {}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        from .models.branch import branch

        channels = structure.get("gate_channels")
        if channels is not None and (type(channels) is not int or not 0 < channels < 1 << 20):
            raise CheckpointError(f"branch: the recorded gate width {str(channels)[:20]!r} is not a channel count")
        if self.at is None:
            raise CheckpointError("branch: the checkpoint does not record where the model was split")
        return branch(model, self.at, self.n, self.gate, self.rescale, gate_channels=channels)
