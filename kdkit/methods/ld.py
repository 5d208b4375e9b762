"""Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.detection_kd import localization_distillation
from .base import MethodConfig, Outputs, register_method
from .detection_base import DetectionMethod


@dataclass
class LDConfig(MethodConfig):
    weight: float = 0.25  # MMDetection's LD recipes: loss_weight 0.25, T 10
    temperature: float = 10.0

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class LD(DetectionMethod):
    """Localization distillation: at the positive points (the task's ATSS assignment), each side's
    distribution over the bins is softened by ``temperature`` and the student's pulled to the teacher's by
    KL, ``T^2`` times the bins' mean, weighted by the student's highest class score there (as GFL weights
    its box losses) and summed over points, over the 4 sides (MMDetection's LD head). The paper's
    valuable-localization region (distillation at some non-positive points) is not implemented."""

    name = "ld"
    family = "response"
    paper = "Zheng et al. 2022, Localization Distillation for Dense Object Detection"
    Config = LDConfig
    temperature_range = (1.0, 50.0)

    def setup(self, s_info, t_info) -> None:
        self.check_task()

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        s_cls, s_bins = self.split(out.s_logits)
        _, t_bins = self.split(out.t_logits_mean)
        b, a, _, _ = self.positives(out)
        r1 = s_bins.shape[-1]
        weight = s_cls[b, a].detach().sigmoid().amax(-1)[:, None].expand(-1, 4).reshape(-1)
        return {"ld": localization_distillation(s_bins[b, a].reshape(-1, r1), t_bins[b, a].reshape(-1, r1), weight,
                                                self.cfg.temperature)}
