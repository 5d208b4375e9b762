"""The model registry: names to factories of plain ``nn.Module`` classifiers."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry
from .external import create_external, is_external

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build model ``name``: a zoo name (``kdkit list models`` shows them), ``package.module:ClassOrFactory``
    or ``timm:<name>`` (:mod:`kdkit.models.external`)."""
    if is_external(name):
        return create_external(name, num_classes, in_channels, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
