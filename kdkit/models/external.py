"""Models that are not in kdkit's zoo, named in configs and on the command line like zoo models:

- ``package.module:Name`` — a class (an ``nn.Module`` subclass) or a factory function in any importable
  module, e.g. your own ``mynets.models:SmallNet`` (the module must be importable: installed, on
  ``PYTHONPATH``, or in the current folder);
- ``timm:<name>`` — a model of the timm library (when installed), built with
  ``timm.create_model(<name>, num_classes=..., in_chans=...)``; its weights come from ``checkpoint:``
  (a timm or plain ``state_dict`` file), never downloaded by kdkit.

``num_classes`` and ``in_channels`` are passed when the class or factory takes them (by those names, or
through ``**kwargs``); the config's ``kwargs`` are passed as they are. The name and kwargs are recorded
in checkpoints, so ``kdkit eval``/``export``/``profile`` rebuild the model.

A checkpoint is data and must not make kdkit call arbitrary functions: a name read from a checkpoint is
rebuilt when it is an ``nn.Module`` subclass (checked before anything is called) or a timm model; a
factory function named by a checkpoint is called only when its module is trusted, that is imported
with ``--plugin MODULE`` (Python: :func:`trust_module`), or when the user's own config names it too.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import suggest

_TRUSTED: set[str] = set()


def is_external(name: str) -> bool:
    return ":" in name


def trust_module(module: str) -> None:
    """Allow factory functions of ``module`` (and its submodules) to be called when a checkpoint names
    them (``kdkit --plugin MODULE`` does this)."""
    _TRUSTED.add(module)


def _trusted(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in _TRUSTED)


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.partition(":")
    if not module or not attr or ":" in attr:
        raise ConfigError(f"model '{name}': expected 'package.module:ClassOrFactory' (or 'timm:<model name>')")
    return module, attr


def _import(module_name: str) -> Any:
    """``import module_name``; a module of the current folder is found too (as ``python -m`` would), the
    folder being searched last so that it never shadows an installed module."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def resolve(name: str) -> Callable[..., Any]:
    """The class or factory that ``module:attr`` names (``attr`` may be dotted); a ConfigError that says
    what failed (the import, with its own message; a missing attribute, with the closest names)."""
    module_name, attr = _split(name)
    try:
        obj: Any = _import(module_name)
    except ImportError as e:
        raise ConfigError(f"model '{name}': cannot import '{module_name}' ({type(e).__name__}: {e}); the module "
                          "must be installed, on PYTHONPATH or in the current folder") from None
    except Exception as e:  # the module's own error while it is imported
        raise ConfigError(f"model '{name}': importing '{module_name}' failed ({type(e).__name__}: {e})") from None
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"model '{name}': '{where}' has no '{part}'{suggest(part, names)}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    if not callable(obj):
        raise ConfigError(f"model '{name}': '{where}' is a {type(obj).__name__}, not a class or function")
    return obj


def check_from_checkpoint(name: str, source: str, user_names: tuple[str, ...] = ()) -> None:
    """Refuse a model name read from a checkpoint that would make kdkit call an untrusted function (see
    the module docstring); zoo names, timm models and ``nn.Module`` classes pass."""
    from ..errors import CheckpointError

    if not is_external(name) or name.startswith("timm:") or name in user_names:
        return
    try:
        obj = resolve(name)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return
    module = name.partition(":")[0]
    if not _trusted(module):
        raise CheckpointError(
            f"{source} names the factory function '{name}': kdkit calls a function named by a checkpoint only "
            f"from a module you trust: add --plugin {module} (Python: kdkit.trust_module('{module}'))")


def _accepts(fn: Callable[..., Any], arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass only what the user gave
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create_external(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    if name.startswith("timm:"):
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise ConfigError(f"model '{name}': timm is not installed (pip install timm)") from None
        model_name = name.partition(":")[2]
        try:
            model = timm.create_model(model_name, num_classes=num_classes, in_chans=in_channels, **kwargs)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"model '{name}': {e}") from None
    else:
        factory = resolve(name)
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                 if k not in kwargs and _accepts(factory, k)}
        try:
            model = factory(**extra, **kwargs)
        except TypeError as e:
            raise ConfigError(f"model '{name}': {e} (set its arguments with model.kwargs)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{name}' gave a {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["create_external", "check_from_checkpoint", "is_external", "resolve", "trust_module"]
