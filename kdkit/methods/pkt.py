"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInfo
from ..losses import pkt_loss
from .base import Method, MethodConfig, Outputs, embedding_specs, register_method


@dataclass
class PKTConfig(MethodConfig):
    student_layer: str | None = None  # default: the penultimate features
    teacher_layer: str | None = None
    beta: float = 30000.0


@register_method
class PKT(Method):
    """Probabilistic knowledge transfer: match the conditional probability distributions ``p_{i|j}``
    that a cosine-similarity kernel induces over the batch in each feature space (KL divergence).

    ``L = CE + beta * mean_{i,j} p_t log(p_t / p_s)``. The paper trains with the PKT loss alone;
    beta=30000 added to CE is the CRD CIFAR-100 benchmark setting. Dimensions may differ.
    """

    name = "pkt"
    family = "relation"
    paper = "Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge Transfer"
    Config = PKTConfig
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self.student_specs, self.teacher_specs = embedding_specs(
            s_info, t_info, self.cfg.student_layer, self.cfg.teacher_layer)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"pkt": self.cfg.beta * pkt_loss(out.s_feats[self.student_specs[0]],
                                                out.t_feats[self.teacher_specs[0]])}
