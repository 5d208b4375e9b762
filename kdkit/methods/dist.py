"""Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (DIST)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import dist_loss
from .base import Method, MethodConfig, Outputs, register_method


@dataclass
class DISTConfig(MethodConfig):
    beta: float = 2.0  # inter-class relation weight
    gamma: float = 2.0  # intra-class relation weight
    temperature: float = 4.0


@register_method
class DIST(Method):
    """Relation matching of predictions: ``L = CE + T^2 (beta * inter + gamma * intra)``.

    Instead of KL's exact match, DIST asks the student's class probabilities to be linearly correlated
    (Pearson) with the teacher's, per sample (inter-class) and per class across the batch (intra-class).
    Defaults beta=gamma=2, T=4 are the paper's CIFAR-100 settings; its ImageNet setting is
    beta=gamma=1, T=1.
    """

    name = "dist"
    family = "response"
    paper = "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher"
    Config = DISTConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        return {"dist": dist_loss(out.s_logits, out.t_logits_mean, c.temperature, c.beta, c.gamma)}
