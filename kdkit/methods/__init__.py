"""Distillation methods, one file each, registered by name (``kdkit list methods``)."""

from . import at, cc, dist, dkd, fitnets, kd, logit_mse, pkt, rkd, sp, vanilla  # noqa: E402,F401,I001  (registration)
from .base import (
    METHODS,
    Distiller,
    Method,
    MethodConfig,
    Outputs,
    create_method,
    list_methods,
    method_config,
    register_method,
)

__all__ = ["METHODS", "Distiller", "Method", "MethodConfig", "Outputs", "create_method", "list_methods",
           "method_config", "register_method"]
