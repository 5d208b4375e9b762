"""Park et al., "Relational Knowledge Distillation", CVPR 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInfo
from ..losses import rkd_angle, rkd_distance
from .base import Method, MethodConfig, Outputs, embedding_specs, register_method


@dataclass
class RKDConfig(MethodConfig):
    student_layer: str | None = None  # default: the penultimate features (input of the classifier)
    teacher_layer: str | None = None
    distance_weight: float = 25.0
    angle_weight: float = 50.0


@register_method
class RKD(Method):
    """Relational KD: match the structure of the embedding, not the embedding itself.

    ``L = CE + w_d * huber(psi_D^s, psi_D^t) + w_a * huber(psi_A^s, psi_A^t)`` where psi_D are pairwise
    distances normalised by their mean and psi_A the cosines of all triplet angles (paper eq. (4)-(7)).
    Weights 25 and 50 are the paper's. Embedding dimensions of student and teacher may differ.
    """

    name = "rkd"
    family = "relation"
    paper = "Park et al. 2019, Relational Knowledge Distillation"
    Config = RKDConfig
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self.student_specs, self.teacher_specs = embedding_specs(
            s_info, t_info, self.cfg.student_layer, self.cfg.teacher_layer)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        es, et = out.s_feats[self.student_specs[0]], out.t_feats[self.teacher_specs[0]]
        terms = {}
        if self.cfg.distance_weight:
            terms["rkd_distance"] = self.cfg.distance_weight * rkd_distance(es, et)
        if self.cfg.angle_weight:
            terms["rkd_angle"] = self.cfg.angle_weight * rkd_angle(es, et)
        return terms
