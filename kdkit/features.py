"""Capture intermediate features of any ``nn.Module`` by dotted module path.

A path names a submodule as in ``model.named_modules()`` (``"layer3"``, ``"layer3.2.conv2"``). By default
the module's *output* is captured; append ``":input"`` to capture its first positional input instead
(``"fc:input"`` is the penultimate feature vector of most classifiers).

Wrapped models work: ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``)
wrappers are looked through, and paths may be given with or without the wrapper's prefix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import batch
from .errors import ConfigError, LayerPathError

_WRAPPER_ATTRS = ("_orig_mod", "module")  # torch.compile, DDP / DataParallel


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        for attr in _WRAPPER_ATTRS:
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module) and _is_wrapper(model, attr):
                model = inner
                break
        else:
            return model


def _is_wrapper(model: nn.Module, attr: str) -> bool:
    if attr == "_orig_mod":
        return True
    return isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel)


def _strip_prefix(path: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        while path.startswith(prefix):
            path = path[len(prefix):]
    return path


def split_spec(spec: str) -> tuple[str, str]:
    """``"layer3:input"`` -> ``("layer3", "input")``; ``"layer3"`` -> ``("layer3", "output")``."""
    path, _, where = spec.partition(":")
    where = where or "output"
    if where not in ("input", "output"):
        raise LayerPathError(f"feature spec '{spec}': the part after ':' must be 'input' or 'output'")
    return _strip_prefix(path), where


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` or a :class:`LayerPathError` listing the closest valid paths."""
    base = unwrap(model)
    modules = dict(base.named_modules())
    path = _strip_prefix(path)
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
    if not close:  # fall back to the siblings of the deepest existing parent
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        close = [n for n in names if n.startswith(parent) and n.count(".") == path.count(".")][:5]
    hint = f"; closest valid paths: {', '.join(close)}" if close else ""
    raise LayerPathError(
        f"no module '{path}' in {type(base).__name__}{hint} (`kdkit inspect` lists every path)"
    )


class FeatureTap:
    """Forward hooks that record features by module path; always removed afterwards.

    Use as a context manager (hooks live only inside the ``with`` block)::

        with FeatureTap(model, ["layer2", "layer3", "fc:input"]) as tap:
            logits = model(x)
        f2, f3, emb = tap["layer2"], tap["layer3"], tap["fc:input"]

    or keep it attached (``tap.attach()`` ... ``tap.remove()``) for a whole training run. Features are
    stored without detaching, so gradients flow through them; ``tap.clear()`` drops them. A module that
    runs several times in one forward keeps its last call.
    """

    def __init__(self, model: nn.Module, specs: Iterable[str]):
        self.model = model
        self.specs = list(dict.fromkeys(specs))
        self.features: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pinned = False
        self._targets = [(spec, resolve_module(model, split_spec(spec)[0]), split_spec(spec)[1])
                         for spec in self.specs]

    def attach(self) -> FeatureTap:
        if self._handles:
            return self
        for spec, module, where in self._targets:
            if where == "input":  # before the module runs: an in-place module would overwrite its input
                hook = self._make_pre_hook(spec, bool(getattr(module, "inplace", False)))
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(self._make_hook(spec)))
        return self

    def _make_hook(self, spec: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            self.features[spec] = output[0] if isinstance(output, tuple | list) else output

        return hook

    def _make_pre_hook(self, spec: str, copy: bool):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            self.features[spec] = inputs[0].clone() if copy else inputs[0]

        return hook

    def pin(self) -> FeatureTap:
        """Attach for good: leaving a ``with`` block no longer removes the hooks (``remove()`` still does)."""
        self._pinned = True
        return self.attach()

    def remove(self) -> None:
        self._pinned = False
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.features = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureTap:
        self.clear()
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        if not self._pinned:
            self.remove()

    def __getitem__(self, spec: str) -> Tensor:
        if spec not in self.features:
            raise KeyError(f"feature '{spec}' was not captured (did the forward pass reach it?)")
        return self.features[spec]

    def __del__(self) -> None:
        self.remove()


# ----------------------------------------------------------------------------- probing


@dataclass
class LayerInfo:
    path: str
    type: str
    shape: tuple[int, ...] | None  # output shape without the batch dimension; None if not a tensor
    params: int  # parameters owned by this module and its children
    order: int  # position at which the module's forward finished
    leaf: bool = False  # a module without children
    in_shape: tuple[int, ...] | None = None  # shape of the first positional input


@dataclass
class ModelInfo:
    """What one probing forward pass learned about a model."""

    layers: dict[str, LayerInfo]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    network: str = ""  # which network of a run, e.g. "the student (cnn_tiny)", for messages

    def shape(self, spec: str) -> tuple[int, ...]:
        """Shape (without the batch dimension) of a captured feature: a module's output, or its input."""
        path, where = split_spec(spec)
        info = self.layers.get(path)
        of = f" of {self.network}" if self.network else ""
        if info is None:
            close = difflib.get_close_matches(path, [p for p in self.layers if p], n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise LayerPathError(f"no module '{path}'{of} ran in the probing forward pass{hint} "
                                 "(`kdkit inspect MODEL` lists every path)")
        if where == "input":
            if info.in_shape is None:
                raise LayerPathError(f"no tensor input recorded at '{path}'{of}")
            return info.in_shape
        if info.shape is None:
            raise LayerPathError(f"no tensor output recorded at '{path}'{of} (its forward returned a "
                                 "non-tensor)")
        return info.shape

    def stages(self) -> list[str]:
        """Last module of each spatial stage, in execution order.

        Among modules with a 4-D output (``[C, H, W]``, H*W > 1), groups them by spatial size; in each
        group keeps the shallowest modules (fewest dots in the path) and of those the one whose forward
        finished last: the enclosing stage rather than its last layer, and not the pre-activation of the
        next stage's first block. This finds ``layer1..layer3`` of a CIFAR ResNet, ``block1..block3`` of
        a WRN and the last block before each pooling of a VGG, without any per-model table.
        """
        best: dict[tuple[int, int], LayerInfo] = {}
        for info in self.layers.values():
            if info.path and info.shape is not None and len(info.shape) == 3:
                hw = info.shape[1:]
                if hw[0] * hw[1] <= 1:
                    continue
                cur = best.get(hw)
                key = (-info.path.count("."), info.order)
                if cur is None or key > (-cur.path.count("."), cur.order):
                    best[hw] = info
        return [i.path for i in sorted(best.values(), key=lambda i: i.order)]

    def preactivation(self, path: str) -> str:
        """The pre-ReLU version of stage ``path``: if the last leaf module to run inside it is a ReLU with
        the stage's output shape, that ReLU's input (``"layer1.2.relu:input"``); otherwise the stage's
        output itself (pre-activation networks such as WRN end their blocks before the ReLU)."""
        relus = ("ReLU", "ReLU6", "LeakyReLU")
        if self.layers[path].type in relus:
            return path + ":input"
        inside = [i for i in self.layers.values() if i.leaf and i.path.startswith(path + ".")]
        if inside:
            last = max(inside, key=lambda i: i.order)
            if last.type in relus and last.shape == self.shape(path):
                return last.path + ":input"
        return path


@torch.no_grad()
def probe(model: nn.Module, input_shape: Sequence[int] | Tensor,
          device: torch.device | str | None = None) -> ModelInfo:
    """Run one no-grad forward on zeros of ``[2, *input_shape]`` (or on the given example batch: a task's
    ``example_input``) and record every module's output shape.

    The model's train/eval mode is restored afterwards; batch-norm statistics are not touched (eval mode).
    """
    base = unwrap(model)
    if device is None:
        p = next(base.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    layers: dict[str, LayerInfo] = {}
    counter = [0]
    handles = []
    names = {m: n for n, m in base.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        path = names[module]
        shape = tuple(output.shape[1:]) if isinstance(output, Tensor) else None
        first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        layers[path] = LayerInfo(path, type(module).__name__, shape, sum(p.numel() for p in module.parameters()),
                                 counter[0], leaf=next(module.children(), None) is None,
                                 in_shape=tuple(first.shape[1:]) if first is not None else None)
        counter[0] += 1

    for module in names:
        handles.append(module.register_forward_hook(hook))
    was_training = base.training
    base.eval()
    try:
        structured = bool(batch.tensors(input_shape))  # an example batch (a tensor, tuple or dict of tensors)
        example = input_shape if structured else torch.zeros(2, *input_shape, device=device)
        out = batch.call(base, batch.to_device(example, device))
    finally:
        base.train(was_training)
        for h in handles:
            h.remove()
    out_shape = tuple(out.shape[1:]) if isinstance(out, Tensor) else None
    if not structured:
        shape = tuple(input_shape)
    elif isinstance(input_shape, Tensor):
        shape = tuple(input_shape.shape[1:])
    else:
        shape = batch.shapes(input_shape)
    return ModelInfo(layers, shape, out_shape)


def format_inspect(model: nn.Module, info: ModelInfo) -> str:
    """Table of every module path with its type, output shape and parameter count."""
    base = unwrap(model)
    rows = [("path", "type", "output shape", "params")]
    for path, module in base.named_modules():
        li = info.layers.get(path)
        shape = "-" if li is None or li.shape is None else "x".join(map(str, li.shape))
        params = sum(p.numel() for p in module.parameters())
        rows.append((path or "(model)", type(module).__name__, shape, f"{params:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    stages = info.stages()
    lines.append("")
    lines.append(f"stages (default feature layers): {', '.join(stages) if stages else '(none found)'}")
    return "\n".join(lines)


def pick_logits(out: Any, output: str | int | None = None) -> Tensor:
    """The logits in a forward's output: ``output`` picks the index, key or attribute; by default a tensor
    passes, a sequence gives its first tensor, a dict its ``"logits"`` entry (``"out"`` for torchvision's
    segmentation models, or its only tensor) and any
    other object (a dataclass, a ``ModelOutput``-like class) its ``logits`` attribute. Anything else is a
    :class:`ConfigError` naming what there was."""
    if isinstance(out, Tensor) and output is None:
        return out
    if isinstance(out, (tuple, list)):
        if isinstance(output, int) and -len(out) <= output < len(out):
            found = out[output]
        elif output is None:
            found = next((o for o in out if isinstance(o, Tensor)), None)
        else:
            raise ConfigError(f"model output: index {output!r} of a {len(out)}-element {type(out).__name__}")
    elif isinstance(out, dict):
        key = output if output is not None else ("out" if "out" in out and "logits" not in out else "logits")
        tensors = [k for k, v in out.items() if isinstance(v, Tensor)]
        if key in out:
            found = out[key]
        elif output is None and len(tensors) == 1:
            found = out[tensors[0]]
        else:
            raise ConfigError(f"model output: no key {key!r} in the forward's dict (keys: "
                              f"{', '.join(map(str, out))}); say which is the logits with model.output")
    elif isinstance(output, int):
        found = None
    else:
        found = getattr(out, output if output is not None else "logits", None)
    if not isinstance(found, Tensor):
        raise ConfigError(f"model output: the forward returned a {type(out).__name__} without a logits tensor"
                          + (f" at {output!r}" if output is not None else "") + "; set model.output")
    return found


def logits_output(model: nn.Module, output: str | int | None = None) -> nn.Module:
    """Make ``model(x)`` return its logits (:func:`pick_logits`) when its forward returns a tuple, list,
    dict or output object: a forward hook on the model, so module paths, weights and checkpoints stay as
    they are. Idempotent."""
    if getattr(model, "_kdkit_output", "unset") == output:
        return model

    def pick(module: nn.Module, inputs: tuple, out: Any) -> Tensor:
        return pick_logits(out, output)

    if hasattr(model, "_kdkit_output_hook"):
        model._kdkit_output_hook.remove()
    model._kdkit_output_hook = model.register_forward_hook(pick)
    model._kdkit_output = output
    return model


def input_of(model: nn.Module, key: str | int | None) -> nn.Module:
    """Make ``model`` take one input of a batch with several: ``key`` a dict's key or a tuple's index (each
    network of a cross-modal run told which modality it sees). A forward pre-hook, so module paths, weights
    and checkpoints stay as they are; one input given alone (an exported network's) passes as it is."""
    if key is None or getattr(model, "kdkit_input", None) == key:
        return model

    def select(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs and not args:  # a dict batch, passed as keywords
            if key not in kwargs:
                raise ConfigError(f"model.input: '{key}' is not one of the batch's inputs ({', '.join(kwargs)})")
            return (kwargs[key],), {}
        if len(args) == 1 and not kwargs:
            return None
        if isinstance(key, int) and -len(args) <= key < len(args):
            return (args[key],), {}
        raise ConfigError(f"model.input: {key!r} picks none of the batch's {len(args)} positional inputs")

    model.register_forward_pre_hook(select, with_kwargs=True)
    model.kdkit_input = key
    return model


def default_embedding(info: ModelInfo) -> str:
    """The penultimate representation: the input of the last ``nn.Linear`` to run (``"fc:input"``)."""
    linears = [i for i in info.layers.values() if i.type == "Linear"]
    if not linears:
        raise ConfigError("no nn.Linear classifier found by probing; give the embedding layer explicitly")
    return max(linears, key=lambda i: i.order).path + ":input"
