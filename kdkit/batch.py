"""The batch protocol: what a batch is, how its inputs reach a network, and how they move between devices.

A batch from a user's loader is a pair ``(inputs, targets)``. ``inputs`` is

- a tensor, passed as ``model(inputs)``;
- a tuple or list of tensors, passed positionally: ``model(*inputs)`` (a model whose ``forward`` takes
  several inputs, e.g. ``forward(self, image, mask)``);
- a mapping of names to tensors, passed as keywords: ``model(**inputs)`` (e.g. ``input_ids`` and
  ``attention_mask`` of a text model).

kdkit's own loaders yield :class:`Batch` ``(inputs, targets, index)``, a named tuple of its own type, so
that a user's flat 3-tuple is never mistaken for one: several inputs are nested, ``((x1, x2), y)``, never
``(x1, x2, y)``. Moving a batch to a device moves every tensor in it.

kdkit's in-memory datasets keep several inputs in their structure (:func:`cat`, :func:`index`); where one
input would be described by its shape, several are described by an example batch, from which batches of
any size are made to probe, trace, count and time a network (:func:`example`), and fed to ONNX Runtime by
name (:func:`input_names`, :func:`onnx_feed`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ConfigError

PROTOCOL = ("a batch is (inputs, targets), inputs a tensor, a tuple of tensors (passed positionally) or a dict of "
            "tensors (passed as keywords); several inputs are nested: ((x1, x2), y)")


class Batch(NamedTuple):
    """A batch of kdkit's loaders: the inputs (any of the protocol's forms), the targets, and the positions
    of the samples in their split (for methods that index per-sample memories, such as CRD)."""

    inputs: Any
    targets: Any
    index: Tensor | None


def split(batch: Any) -> tuple[Any, Any, Tensor | None]:
    """``(inputs, targets, index)`` of a batch: a :class:`Batch`, or a user's ``(inputs, targets)`` pair
    (no index)."""
    if isinstance(batch, Batch):
        return batch.inputs, batch.targets, batch.index
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1], None
    got = f"a {len(batch)}-tuple" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
    raise ConfigError(f"got {got}: {PROTOCOL}")


def call(model: nn.Module | Callable[..., Any], inputs: Any) -> Any:
    """``model`` on ``inputs`` as its ``forward`` expects them (see the module docstring)."""
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise ConfigError(f"inputs of type {type(inputs).__name__}: {PROTOCOL}")


def select(inputs: Any, key: str | int | None) -> Any:
    """The one input that ``key`` names among several (a dict's key, a tuple's index: a network's
    ``model.input``); ``inputs`` as they are when ``key`` is None or they are one tensor."""
    if key is None or isinstance(inputs, Tensor):
        return inputs
    try:
        return inputs[key]
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"model.input: {key!r} is not one of the inputs {shapes(inputs)}") from None


def apply(fn: Callable[[Tensor], Tensor], inputs: Any) -> Any:
    """``fn`` on every tensor of ``inputs``, keeping its structure (other values as they are)."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: apply(fn, v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        out = [apply(fn, v) for v in inputs]
        return out if isinstance(inputs, list) else tuple(out)
    return inputs


def to_device(inputs: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``inputs`` with every tensor on ``device`` (a tensor already there is not copied)."""
    return apply(lambda t: t.to(device, non_blocking=non_blocking), inputs)


def tensors(inputs: Any) -> list[Tensor]:
    """Every tensor of ``inputs``, in order."""
    found: list[Tensor] = []
    apply(lambda t: found.append(t) or t, inputs)
    return found


def shapes(inputs: Any) -> Any:
    """Each tensor's shape without the batch dimension, in the structure of ``inputs`` (for messages and
    records)."""
    if isinstance(inputs, Tensor):
        return list(inputs.shape[1:])
    if isinstance(inputs, Mapping):
        return {k: shapes(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return [shapes(v) for v in inputs]
    return None


def structured(inputs: Any) -> bool:
    """Whether ``inputs`` are several tensors (a tuple, list or dict of them), not one tensor."""
    return not isinstance(inputs, Tensor) and bool(tensors(inputs))


def size(inputs: Any) -> int:
    """The number of samples: the first dimension, which every tensor of ``inputs`` shares."""
    sizes = {len(t) if t.dim() else 0 for t in tensors(inputs)}
    if len(sizes) != 1:
        raise ConfigError(f"the inputs' tensors hold different numbers of samples {sorted(sizes)} ({shapes(inputs)})")
    return sizes.pop()


def index(inputs: Any, idx: Tensor) -> Any:
    """The samples ``idx`` of every tensor of ``inputs`` (on each tensor's own device)."""
    return apply(lambda t: t[idx.to(t.device)], inputs)


def signature(inputs: Any) -> str:
    """The structure, per-sample shapes and dtypes of ``inputs``, as text: equal for batches of one form."""
    def leaf(t: Tensor) -> str:
        return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape[1:])}"

    if isinstance(inputs, Tensor):
        return leaf(inputs)
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {signature(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(signature(v) for v in inputs) + ")"
    return type(inputs).__name__


def cat(parts: list[Any]) -> Any:
    """Batches of one form (:func:`signature`) joined along the first dimension, keeping the form."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: cat([p[k] for p in parts]) for k in first}
    return tuple(cat([p[i] for p in parts]) for i in range(len(first)))


def example(spec: Any, n: int = 2, device: torch.device | str = "cpu") -> Any:
    """A batch of ``n`` inputs for probing, tracing and timing a network: zeros of ``[n, *spec]`` for a
    shape, or for an example batch (several inputs: their dtypes and values matter, token ids and masks)
    its samples repeated to ``n``, on ``device``."""
    if tensors(spec):
        return apply(lambda t: t[torch.arange(n, device=t.device) % len(t)].to(device), spec)
    return torch.zeros(n, *spec, device=device)


def input_names(inputs: Any) -> list[str]:
    """The ONNX input names of ``inputs``: ``input`` for one tensor, ``input0``, ``input1``, ... for a tuple,
    the keys for a dict."""
    if isinstance(inputs, Mapping):
        return [str(k) for k in inputs]
    if isinstance(inputs, (tuple, list)):
        return [f"input{i}" for i in range(len(inputs))]
    return ["input"]


def onnx_feed(inputs: Any) -> dict[str, Any]:
    """``inputs`` as an ONNX Runtime feed (names of :func:`input_names`, CPU numpy arrays)."""
    leaves = list(inputs.values()) if isinstance(inputs, Mapping) else (
        list(inputs) if isinstance(inputs, (tuple, list)) else [inputs])
    return {name: t.detach().cpu().numpy() for name, t in zip(input_names(inputs), leaves)}


__all__ = ["PROTOCOL", "Batch", "apply", "call", "cat", "example", "index", "input_names", "onnx_feed", "shapes",
           "signature", "size", "split", "structured", "tensors", "to_device"]
