"""Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014: regress the teacher's logits."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import logit_mse
from .base import Method, MethodConfig, Outputs, register_method


@dataclass
class LogitMSEConfig(MethodConfig):
    ce_weight: float = 0.0  # the paper trains on the logit regression alone


@register_method
class LogitMSE(Method):
    """``L = ce_weight * CE(z_s, y) + weight * mean((z_s - z_t)^2)``.

    The paper's mimic networks learn from the teacher's logits only (ce_weight 0). With several teachers
    the target is their mean logit vector.
    """

    name = "logit_mse"
    family = "response"
    paper = "Ba & Caruana 2014, Do Deep Nets Really Need to be Deep?"
    Config = LogitMSEConfig

    def ce_weight(self) -> float:
        return self.cfg.ce_weight

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"logit_mse": logit_mse(out.s_logits, out.t_logits_mean)}
