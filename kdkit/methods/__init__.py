"""Distillation methods, one file each, registered by name (``kdkit list methods``)."""

from . import (  # noqa: F401  (importing a method's module registers it)
    ab,
    at,
    at_grad,
    cc,
    cl,
    crd,
    cwd,
    dcm,
    dist,
    dkd,
    dml,
    fitnets,
    fsp,
    ft,
    irg,
    kd,
    kdcl,
    kdsvd,
    logit_mse,
    netaug,
    nst,
    okddip,
    one,
    pkt,
    reviewkd,
    rkd,
    skd_holistic,
    skd_pair,
    skd_pixel,
    sp,
    vanilla,
    vid,
)
from .base import (
    METHODS,
    Method,
    MethodConfig,
    Outputs,
    create_method,
    list_methods,
    method_config,
    method_name,
    register_method,
)
from .distiller import Distiller
from .stages import Stage

__all__ = ["METHODS", "Distiller", "Method", "MethodConfig", "Outputs", "Stage", "create_method", "list_methods",
           "method_config", "method_name", "register_method"]
