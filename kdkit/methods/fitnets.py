"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..adapters import build_regressor
from ..errors import ConfigError
from ..features import ModelInfo
from ..losses import hint_loss
from .base import Method, MethodConfig, Outputs, default_stages, register_method


@dataclass
class FitNetsConfig(MethodConfig):
    student_layer: str | None = None  # guided layer; default: the student's middle stage
    teacher_layer: str | None = None  # hint layer; default: the teacher's middle stage
    beta: float = 100.0  # weight of the hint loss when trained jointly with the task loss
    stage1_epochs: int = 0  # the paper's hint-only pre-training of the student up to the guided layer


def _middle_stage(info: ModelInfo) -> str:
    """The default guided/hint layer: the middle one of the stages found by probing."""
    stages = default_stages(info)
    return stages[len(stages) // 2]


@register_method
class FitNets(Method):
    """Hint-based training: a regressor ``r`` maps the student's guided layer ``v_g`` to the teacher's
    hint layer ``u_h``, and ``L_HT = mean((u_h - r(v_g))^2)`` (paper eq. (3), averaged over elements).

    The paper trains in two stages: (1) the student up to the guided layer, with the regressor, on
    ``L_HT`` alone (``stage1_epochs``), then (2) the whole student with KD (combine with ``kd``). The
    CRD benchmark instead adds ``beta * L_HT`` (beta=100) to the task loss in one stage; that is the
    default here (``stage1_epochs: 0``). After stage 1 the hint term stays at weight beta unless
    ``beta: 0``. The regressor is built from probed shapes and trained and saved with the student.
    """

    name = "fitnets"
    family = "feature"
    paper = "Romero et al. 2015, FitNets: Hints for Thin Deep Nets"
    Config = FitNetsConfig
    tasks = ("classification", "segmentation")  # on dense features as well
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("fitnets needs a teacher")
        s = self.cfg.student_layer or _middle_stage(s_info)
        t = self.cfg.teacher_layer or _middle_stage(t_info)
        s_shape, t_shape = s_info.shape(s), t_info.shape(t)
        self.student_specs, self.teacher_specs = [s], [t]
        self.regressor = build_regressor(s_shape, t_shape)

    def _hint(self, out: Outputs) -> Tensor:
        (s,), (t,) = self.student_specs, self.teacher_specs
        return hint_loss(self.regressor(out.s_feats[s]), out.t_feats[t])

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"hint": self._hint(out)}

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        if self.cfg.beta == 0.0:
            return {}
        return {"hint": self.cfg.beta * self._hint(out)}
