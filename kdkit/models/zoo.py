"""The model registry: names to factories of plain ``nn.Module`` classifiers."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry
from .external import create_external, is_external, use_names

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def build_network(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build model ``name`` without importing anything: a zoo (or registered) name, ``timm:<name>``, or
    ``module:Class`` of a module imported on the user's word (:mod:`kdkit.models.external`). What kdkit
    rebuilds from a file (a checkpoint, a stored config) goes through here."""
    if is_external(name):
        return create_external(name, num_classes, in_channels, MODELS.holds, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build model ``name``: a zoo name (``kdkit list models`` shows them), ``package.module:Class`` (the
    module is imported: your call names it) or ``timm:<name>`` (:mod:`kdkit.models.external`)."""
    use_names([name], "create_model")
    return build_network(name, num_classes, in_channels, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
