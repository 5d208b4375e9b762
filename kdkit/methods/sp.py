"""Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInfo
from ..losses import similarity_preserving
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class SPConfig(LayerPairsConfig):  # layers default to the last stage of each model
    gamma: float = 3000.0


@register_method
class SP(LayerPairsMethod):
    """Similarity preserving: inputs that the teacher sees as similar should look similar to the student.

    ``L = CE + gamma * sum_l ||G_s^l - G_t^l||_F^2 / B^2`` with ``G = row_normalise(Q Q^T)`` the
    ``[B, B]`` batch similarity of the flattened layer-l activations, so any widths and spatial sizes
    pair up. Default: the last stage of each model, gamma=3000 (paper, CIFAR-10 experiments).
    """

    name = "sp"
    family = "relation"
    paper = "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation"
    Config = SPConfig

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        if self.cfg.student_layers is None and self.cfg.teacher_layers is None:
            self.student_specs, self.teacher_specs = self.student_specs[-1:], self.teacher_specs[-1:]

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        total = sum(similarity_preserving(out.s_feats[s], out.t_feats[t])
                    for s, t in zip(self.student_specs, self.teacher_specs))
        return {"sp": self.cfg.gamma * total}
