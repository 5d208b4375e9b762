"""Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS Deep Learning Workshop 2015."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..losses import kd_loss, soft_targets
from .base import Method, MethodConfig, Outputs, register_method


@dataclass
class KDConfig(MethodConfig):
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft loss; the hard (cross-entropy) loss gets 1 - alpha
    ensemble: Literal["logits", "probs"] = "logits"  # how several teachers are combined

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@register_method
class KD(Method):
    """Soft-target distillation.

    ``L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``

    The T^2 factor (paper, section 2.1) keeps the soft-target gradients on the same scale for every T.
    With several teachers (an ensemble, paper section 2) the soft targets are the softmax of the mean
    logits (``ensemble: logits``) or the mean of the teachers' softmax outputs (``ensemble: probs``).
    Defaults T=4, alpha=0.9 are those of the CRD CIFAR-100 benchmark (Tian et al. 2020); the paper
    leaves both to be tuned and recommends a considerably lower weight on the hard loss.
    """

    name = "kd"
    family = "response"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network"
    Config = KDConfig

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.alpha

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        p_t = soft_targets(out.t_logits, self.cfg.temperature, self.cfg.ensemble)
        return {"kd": self.cfg.alpha * kd_loss(out.s_logits, p_t, self.cfg.temperature)}
