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


__all__ = ["PROTOCOL", "Batch", "apply", "call", "shapes", "split", "tensors", "to_device"]
