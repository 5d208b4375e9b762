"""Validation of what a checkpoint holds, before any of it is used: every check names the file and what
is wrong in one line (:class:`~kdkit.errors.CheckpointError`, exit code 4).

- for weights (a teacher, ``kdkit eval``, initial weights): the model record's fields and types, and the
  weights against the model they go into (same keys, shapes and dtypes, finite values);
- for resuming: besides, every piece of training state against what the rebuilt run expects (the
  distiller's tensors, the optimizer's groups and per-parameter state, epoch and step counters, the data
  loader's state, the RNG states, trying each RNG state on a scratch generator first).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError


def _fail(source: str, what: str) -> CheckpointError:
    return CheckpointError(f"{source}: {what}")


def check_record(record: Any, source: str, where: str = "model record") -> dict[str, Any]:
    """A model record's structure: ``name`` (str), ``kwargs`` (mapping with string keys), ``transforms``
    (list of mappings), task fields (ints, e.g. ``num_classes``)."""
    if not isinstance(record, dict):
        raise _fail(source, f"the {where} is a {type(record).__name__}, not a mapping")
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise _fail(source, f"the {where} has no model name")
    if not isinstance(record.get("kwargs", {}), dict) or not all(isinstance(k, str) for k in record.get("kwargs", {})):
        raise _fail(source, f"the {where}'s kwargs are not a mapping of names")
    transforms = record.get("transforms", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise _fail(source, f"the {where}'s transforms are not a list of mappings")
    for key in ("num_classes", "in_channels"):
        value = record.get(key)
        if value is not None and (type(value) is not int or not 0 < value < 2**31):
            raise _fail(source, f"the {where}'s {key} is {str(value)[:40]!r}, not a positive integer")
    return record


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def check_tensors(expected: dict[str, Tensor], found: Any, source: str, what: str, finite: bool = True) -> None:
    """``found`` has exactly ``expected``'s keys, each with its shape and dtype (and finite values)."""
    if not is_state_dict(found):
        raise _fail(source, f"the {what} are not a mapping of names to tensors")
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        raise _fail(source, f"the {what} do not fit the model ({'; '.join(parts)})")
    for k, v in expected.items():
        f = found[k]
        if f.shape != v.shape or f.dtype != v.dtype:
            raise _fail(source, f"the {what} do not fit the model: '{k}' is {f.dtype} {list(f.shape)}, "
                                f"expected {v.dtype} {list(v.shape)}")
        if finite and f.is_floating_point() and not bool(torch.isfinite(f).all()):
            raise _fail(source, f"the {what} hold non-finite values in '{k}'")


def check_rng(state: Any, source: str, where: str, device: torch.device | str = "cpu") -> None:
    """An RNG state: a uint8 tensor that a scratch generator of ``device`` accepts."""
    if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        raise _fail(source, f"the {where} RNG state is not a byte tensor")
    try:
        torch.Generator(device=device).set_state(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise _fail(source, f"the {where} RNG state is malformed ({' '.join(str(e).split())[:120]})") from None


def _int(value: Any, source: str, what: str, low: int = 0, high: int = 2**62) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(source, f"'{what}' is {str(value)[:40]!r}, expected an integer in [{low}, {high}]")
    return value


def check_training_state(ckpt: dict[str, Any], source: str, distiller_state: dict[str, Tensor],
                         optimizer: torch.optim.Optimizer, total_epochs: int) -> None:
    """Everything resuming reads, against the rebuilt run (the loader's state is checked by the loader)."""
    missing = [k for k in ("distiller", "optimizer", "epoch", "step", "loader", "rng") if k not in ckpt]
    if missing:
        raise _fail(source, f"holds no training state ({', '.join(missing)} missing): it can be evaluated or "
                            "used as a teacher, not resumed")
    check_tensors(distiller_state, ckpt["distiller"], source, "trainable weights ('distiller')")
    _int(ckpt["epoch"], source, "epoch", 0, total_epochs)
    _int(ckpt["step"], source, "step")
    best = ckpt.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int | float) or not math.isfinite(best)):
        raise _fail(source, f"'best' is {str(best)[:40]!r}, not a finite number")
    if ckpt.get("best_epoch") is not None:
        _int(ckpt["best_epoch"], source, "best_epoch", 0, total_epochs)
    if ckpt.get("metrics") is not None and not isinstance(ckpt["metrics"], dict):
        raise _fail(source, "'metrics' is not a mapping")
    _check_optimizer(ckpt["optimizer"], optimizer, source)
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or "torch" not in rng:
        raise _fail(source, "the RNG states are not a mapping with 'torch'")
    check_rng(rng["torch"], source, "CPU")
    cuda = rng.get("cuda")
    if cuda is not None and (not isinstance(cuda, list | tuple) or not all(isinstance(s, Tensor) for s in cuda)):
        raise _fail(source, "the CUDA RNG states are not a list of tensors")
    if not isinstance(ckpt["loader"], dict):
        raise _fail(source, "the data loader state is not a mapping")


def _check_optimizer(state: Any, optimizer: torch.optim.Optimizer, source: str) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or not isinstance(
            state.get("param_groups"), list):
        raise _fail(source, "the optimizer state is not a mapping with 'state' and 'param_groups'")
    groups = optimizer.param_groups
    if len(state["param_groups"]) != len(groups):
        raise _fail(source, f"the optimizer has {len(state['param_groups'])} parameter groups, the run has "
                            f"{len(groups)}")
    params: dict[int, Tensor] = {}
    for saved, ours in zip(state["param_groups"], groups):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or len(ids) != len(ours["params"]) or not all(type(i) is int for i in ids):
            raise _fail(source, "the optimizer's parameter groups do not match the run's parameters")
        for key in ("lr", "weight_decay"):
            v = saved.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                raise _fail(source, f"the optimizer's {key} is {str(v)[:40]!r}")
        params.update(zip(ids, ours["params"]))
    for i, entry in state["state"].items():
        if i not in params or not isinstance(entry, dict):
            raise _fail(source, f"the optimizer holds state for an unknown parameter {str(i)[:20]!r}")
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != params[i].shape:
                raise _fail(source, f"the optimizer's '{name}' of a parameter is {list(value.shape)}, the parameter "
                                    f"is {list(params[i].shape)}")
            if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _fail(source, f"the optimizer's '{name}' holds non-finite values")
