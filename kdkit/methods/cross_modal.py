"""Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision Transfer", CVPR 2016."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..adapters import build_regressor
from ..errors import ConfigError
from ..features import ModelInfo
from ..losses import hint_loss, kd_loss
from .base import Method, MethodConfig, Outputs, default_stages, register_method


@dataclass
class CrossModalConfig(MethodConfig):
    student_layer: str | None = None  # default: the student's last stage
    teacher_layer: str | None = None  # default: the teacher's last stage (the paper: its last conv layer)
    feature_weight: float = 1.0  # the paper's transfer: L2 regression of the teacher's features
    kd_weight: float = 0.0  # and/or Hinton's KD on the logits
    temperature: float = 4.0
    ce_weight: float = 1.0  # the labels of the student's modality (0: the paper's transfer without them)

    def validate(self) -> None:
        for name in ("feature_weight", "kd_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.feature_weight == 0 and self.kd_weight == 0:
            raise ValueError("feature_weight and kd_weight are both 0: nothing is transferred")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class CrossModal(Method):
    """Cross-modal distillation (supervision transfer): on paired samples, the teacher sees one modality and
    the student another (each network's ``input`` names which of the batch's inputs it takes: ``model:
    {name: ..., input: edges}``, ``teacher: {..., input: image}``), and the student learns the teacher's
    representation of the same sample: ``feature_weight * mean((r(f_s) - f_t)^2)`` at a layer pair (the
    last stages by default; ``r`` a regressor built from the probed shapes, as FitNets'), the paper's
    transfer, and/or ``kd_weight`` x Hinton's KD on the logits, beside ``ce_weight`` x the cross-entropy.
    The paper regresses a mid-level layer of a depth (or optical-flow) network onto an RGB network's
    trained on ImageNet, without labels in the new modality (``ce_weight: 0``), then fine-tunes. A run
    whose two networks take the same input is refused: that is ordinary distillation."""

    name = "cross_modal"
    family = "feature"
    paper = "Gupta et al. 2016, Cross Modal Distillation for Supervision Transfer"
    Config = CrossModalConfig
    uses_teacher_features = True

    def ce_weight(self) -> float:
        return self.cfg.ce_weight

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        teacher = self.teacher_modules.get(self.cfg.teacher or self.teacher_names[0]) if self.teacher_names else None
        s_in = getattr(self.networks.get("student"), "kdkit_input", None)
        t_in = getattr(teacher, "kdkit_input", None)
        if s_in is None or t_in is None or s_in == t_in:
            raise ConfigError(f"cross_modal: the student and the teacher must take different inputs of a paired "
                              f"dataset (model.input and teacher.input name them); they take "
                              f"{s_in if s_in is not None else 'all'} and {t_in if t_in is not None else 'all'}")
        s = self.cfg.student_layer or default_stages(s_info)[-1]
        t = self.cfg.teacher_layer or default_stages(t_info)[-1]
        self.student_specs, self.teacher_specs = [s], [t]
        self.regressor = build_regressor(s_info.shape(s), t_info.shape(t))

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        terms = {}
        if self.cfg.feature_weight:
            (s,), (t,) = self.student_specs, self.teacher_specs
            terms["transfer"] = self.cfg.feature_weight * hint_loss(self.regressor(out.s_feats[s]), out.t_feats[t])
        if self.cfg.kd_weight:
            p_t = (out.t_logits_mean.float() / self.cfg.temperature).softmax(1)
            terms["kd"] = self.cfg.kd_weight * kd_loss(out.s_logits, p_t, self.cfg.temperature)
        return terms
