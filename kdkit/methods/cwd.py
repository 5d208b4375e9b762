"""Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..adapters import build_regressor
from ..errors import ConfigError
from ..features import ModelInfo
from ..losses.dense import channel_wise_divergence
from .base import Method, MethodConfig, Outputs, dense_pair, register_method


@dataclass
class CWDConfig(MethodConfig):
    weight: float = 5.0  # MMRazor's PSPNet R101 -> R18 Cityscapes recipe (loss_weight=5, tau=1)
    tau: float = 1.0
    student_layer: str | None = None  # default: the logits (the networks' outputs)
    teacher_layer: str | None = None

    def validate(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if (self.student_layer is None) != (self.teacher_layer is None):
            raise ValueError("student_layer and teacher_layer are given together (or neither: the logits)")


@register_method
class CWD(Method):
    """Channel-wise distillation: each channel's activation map, softened over its positions by ``tau``,
    is a distribution over where that channel (a class, on logits) fires; the student's is pulled to the
    teacher's by KL (:func:`kdkit.losses.dense.channel_wise_divergence`). On the logits by default (the
    paper's main segmentation setting); on a feature pair, a 1x1 convolution maps the student's channels
    to the teacher's when they differ (the paper's and MMRazor's connector). The paper reports T=4 for
    segmentation logits; MMRazor's released recipes use tau=1, weight 5 (the defaults here)."""

    name = "cwd"
    family = "response"
    paper = "Shu et al. 2021, Channel-wise Knowledge Distillation for Dense Prediction"
    Config = CWDConfig
    tasks = ("segmentation",)
    needs_dense_output = True
    temperature_range = None  # tau is a spatial softening

    def __init__(self, cfg: CWDConfig | None = None):
        super().__init__(cfg)
        self.uses_teacher_features = self.cfg.student_layer is not None  # on features, not the logits
        self.needs_dense_output = self.cfg.student_layer is None
        self.connector: nn.Module | None = None

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if self.cfg.student_layer is None:
            return
        if t_info is None:
            raise ConfigError("cwd needs a teacher")
        self.student_specs, self.teacher_specs = [self.cfg.student_layer], [self.cfg.teacher_layer]
        s_shape, t_shape = s_info.shape(self.cfg.student_layer), t_info.shape(self.cfg.teacher_layer)
        if s_shape[0] != t_shape[0]:
            self.connector = build_regressor(s_shape, t_shape)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        if self.cfg.student_layer is None:
            s, t = dense_pair(out.s_logits, out.t_logits_mean)
        else:
            (ss,), (ts,) = self.student_specs, self.teacher_specs
            f = out.s_feats[ss]
            s, t = dense_pair(self.connector(f) if self.connector is not None else f, out.t_feats[ts])
        return {"cwd": channel_wise_divergence(s, t, self.cfg.tau)}
