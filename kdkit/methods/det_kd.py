"""Hinton et al., "Distilling the Knowledge in a Neural Network", 2015, on a detector's class maps."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.detection_kd import sigmoid_kd
from .base import MethodConfig, Outputs, register_method
from .detection_base import DetectionMethod


@dataclass
class DetKDConfig(MethodConfig):
    temperature: float = 1.0

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class DetKD(DetectionMethod):
    """Logit KD on the class maps: at every point and class, the teacher's tempered sigmoid score is the
    soft target of the student's (binary cross-entropy, ``T^2``), summed and divided by the positives (as
    the task's quality focal loss is). The teacher's box distributions are left to ``ld``."""

    name = "det_kd"
    family = "response"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network (on class maps)"
    Config = DetKDConfig

    def setup(self, s_info, t_info) -> None:
        self.check_task()

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        s_cls, _ = self.split(out.s_logits)
        t_cls, _ = self.split(out.t_logits_mean)
        b, _, _, _ = self.positives(out)
        return {"det_kd": sigmoid_kd(s_cls, t_cls, self.cfg.temperature).sum() / max(len(b), 1)}
