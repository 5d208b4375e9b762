"""Park et al., "Relational Knowledge Distillation", CVPR 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import rkd_angle, rkd_distance
from .base import EmbeddingConfig, EmbeddingMethod, Outputs, register_method


@dataclass
class RKDConfig(EmbeddingConfig):
    distance_weight: float = 25.0
    angle_weight: float = 50.0


@register_method
class RKD(EmbeddingMethod):
    """Relational KD: match the structure of the embedding, not the embedding itself.

    ``L = CE + w_d * huber(psi_D^s, psi_D^t) + w_a * huber(psi_A^s, psi_A^t)`` where psi_D are pairwise
    distances normalised by their mean and psi_A the cosines of all triplet angles (paper eq. (4)-(7)).
    Weights 25 and 50 are the paper's. Embedding dimensions of student and teacher may differ.
    """

    name = "rkd"
    family = "relation"
    paper = "Park et al. 2019, Relational Knowledge Distillation"
    Config = RKDConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        es, et = self.embeddings(out)
        terms = {}
        if self.cfg.distance_weight:
            terms["rkd_distance"] = self.cfg.distance_weight * rkd_distance(es, et)
        if self.cfg.angle_weight:
            terms["rkd_angle"] = self.cfg.angle_weight * rkd_angle(es, et)
        return terms
