"""Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import dkd_loss
from .base import Method, MethodConfig, Outputs, register_method, warmup_ramp


@dataclass
class DKDConfig(MethodConfig):
    alpha: float = 1.0  # weight of target-class KD (TCKD)
    beta: float = 8.0  # weight of non-target-class KD (NCKD)
    temperature: float = 4.0
    warmup_epochs: int = 20  # the DKD term ramps up linearly over these epochs


@register_method
class DKD(Method):
    """Decoupled KD: ``L = CE + min((epoch + 1) / warmup, 1) * T^2 (alpha TCKD + beta NCKD)``.

    KD's loss splits into a target-class term (binary: target vs rest) and a non-target term (the
    distribution among the other classes), whose weight in classical KD is tied to the teacher's
    confidence; DKD weights them independently (paper eq. (7)). Defaults are the paper's CIFAR-100
    settings (alpha=1, beta=8, T=4, 20 warm-up epochs); the paper uses beta in 1..8 depending on the pair.
    With several teachers the mean logits are the target.
    """

    name = "dkd"
    family = "response"
    paper = "Zhao et al. 2022, Decoupled Knowledge Distillation"
    Config = DKDConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        ramp = warmup_ramp(out.epoch, c.warmup_epochs)
        return {"dkd": ramp * dkd_loss(out.s_logits, out.t_logits_mean, out.targets, c.temperature, c.alpha, c.beta)}
