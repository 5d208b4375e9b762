"""Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..features import ModelInfo
from ..losses import similarity_preserving
from .base import Method, MethodConfig, Outputs, pair_layers, register_method


@dataclass
class SPConfig(MethodConfig):
    student_layers: list[str] | None = None  # default: the last stage of each model
    teacher_layers: list[str] | None = None
    gamma: float = 3000.0


@register_method
class SP(Method):
    """Similarity preserving: inputs that the teacher sees as similar should look similar to the student.

    ``L = CE + gamma * sum_l ||G_s^l - G_t^l||_F^2 / B^2`` with ``G = row_normalise(Q Q^T)`` the
    ``[B, B]`` batch similarity of the flattened layer-l activations, so any widths and spatial sizes
    pair up. Default: the last stage of each model, gamma=3000 (paper, CIFAR-10 experiments).
    """

    name = "sp"
    family = "relation"
    paper = "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation"
    Config = SPConfig
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("sp needs a teacher")
        s, t = self.cfg.student_layers, self.cfg.teacher_layers
        if s is None and t is None:
            s, t = pair_layers(s_info, t_info, None, None)
            s, t = s[-1:], t[-1:]
        self.student_specs, self.teacher_specs = pair_layers(s_info, t_info, s, t)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        total = sum(similarity_preserving(out.s_feats[s], out.t_feats[t])
                    for s, t in zip(self.student_specs, self.teacher_specs))
        return {"sp": self.cfg.gamma * total}
