"""Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS Deep Learning Workshop 2015."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses import kd_loss, soft_targets
from ..losses.logits import confidence_weights
from .base import Method, MethodConfig, Outputs, register_method


@dataclass
class KDConfig(MethodConfig):
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft loss; the hard (cross-entropy) loss gets 1 - alpha
    ensemble: Literal["logits", "probs"] = "logits"  # how several teachers are combined
    teacher_weights: list[float] | None = None  # several teachers: fixed weights (normalised); None: equal
    weighting: Literal["fixed", "confidence"] = "fixed"  # confidence: per sample, by each p_t(true label)

    def validate(self) -> None:
        if self.teacher_weights is not None and (not self.teacher_weights or min(self.teacher_weights) < 0
                                                 or sum(self.teacher_weights) <= 0):
            raise ValueError(f"teacher_weights must be >= 0 with a positive sum, got {self.teacher_weights}")
        if self.teacher_weights is not None and self.weighting == "confidence":
            raise ValueError("teacher_weights and weighting: confidence exclude each other")
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
    logits (``ensemble: logits``) or the mean of the teachers' softmax outputs (``ensemble: probs``);
    the mean may be weighted, by fixed per-teacher ``teacher_weights`` or, with ``weighting:
    confidence``, per sample by each teacher's probability of the true label (normalised over teachers).
    Defaults T=4, alpha=0.9 are those of the CRD CIFAR-100 benchmark (Tian et al. 2020); the paper
    leaves both to be tuned and recommends a considerably lower weight on the hard loss.
    """

    name = "kd"
    family = "response"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network"
    Config = KDConfig
    tasks = ("classification", "text_classification")  # logits of a sequence as of an image

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.alpha

    def setup(self, s_info, t_info) -> None:
        n = len(self.teacher_names)
        if self.cfg.teacher_weights is not None and len(self.cfg.teacher_weights) != n:
            raise ConfigError(f"kd: teacher_weights has {len(self.cfg.teacher_weights)} entries for {n} teachers")

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        weights = None
        if self.cfg.weighting == "confidence":
            weights = confidence_weights(out.t_logits, out.targets)
        elif self.cfg.teacher_weights is not None:
            weights = torch.tensor(self.cfg.teacher_weights)
        p_t = soft_targets(out.t_logits, self.cfg.temperature, self.cfg.ensemble, weights)
        return {"kd": self.cfg.alpha * kd_loss(out.s_logits, p_t, self.cfg.temperature)}
