"""Distillation methods, one file each, registered by name (``kdkit list methods``)."""

from . import ab, at, at_grad, cc, dist, dkd, fitnets, fsp, ft, kd, logit_mse, nst, pkt, rkd, sp, vanilla, vid  # noqa: E402,F401,I001  (registration)
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
