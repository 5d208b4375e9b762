"""Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses.detection import vlr_region
from ..losses.detection_kd import localization_distillation
from ..tasks.detection import targets_valid
from .base import MethodConfig, Outputs, register_method
from .detection_base import DetectionMethod


@dataclass
class LDConfig(MethodConfig):
    weight: float = 0.25  # MMDetection's LD recipes: loss_weight 0.25, T 10
    temperature: float = 10.0
    # the valuable-localization-region term's factor relative to the main one (the authors' LD head: both
    # loss weights 0.25, so 1); 0: MMDetection's LD head, the main region only
    vlr: float = 1.0
    vlr_alpha: float = 0.25  # the region's lower DIoU bound, as a fraction of each box's ATSS threshold

    def validate(self) -> None:
        if self.temperature <= 0 or self.vlr < 0 or not 0 < self.vlr_alpha < 1:
            raise ValueError(f"temperature must be > 0, vlr >= 0 and vlr_alpha in (0, 1), got {self.temperature}, "
                             f"{self.vlr}, {self.vlr_alpha}")


@register_method
class LD(DetectionMethod):
    """Localization distillation: at the positive points (the task's ATSS assignment), each side's
    distribution over the bins is softened by ``temperature`` and the student's pulled to the teacher's by
    KL, ``T^2`` times the bins' mean, weighted by the student's highest class score there (as GFL weights
    its box losses) and summed over points, over the 4 sides (MMDetection's LD head). Then the paper's
    valuable localization region (:func:`kdkit.losses.detection.vlr_region`: points whose anchor's DIoU
    with a box is between ``vlr_alpha`` times its ATSS threshold and the threshold): the same KL weighted by
    that IoU, over 16, times ``vlr`` (the authors' LD head, ``loss_ld_vlr``)."""

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
        r1, temp = s_bins.shape[-1], self.cfg.temperature
        weight = s_cls[b, a].detach().sigmoid().amax(-1)[:, None].expand(-1, 4).reshape(-1)
        terms = {"ld": localization_distillation(s_bins[b, a].reshape(-1, r1), t_bins[b, a].reshape(-1, r1), weight,
                                                 temp)}
        if self.cfg.vlr > 0:
            _, boxes, valid = targets_valid(out.targets)
            pts, strides, counts = self.grid(s_bins.device)
            with torch.no_grad():
                region = vlr_region(pts, strides, counts, boxes, valid, self.cfg.vlr_alpha)
            vb, va = (region > 0).nonzero(as_tuple=True)
            w = region[vb, va][:, None].expand(-1, 4).reshape(-1)
            kl = localization_distillation(s_bins[vb, va].reshape(-1, r1), t_bins[vb, va].reshape(-1, r1), w, temp)
            terms["ld/vlr"] = self.cfg.vlr * kl / 4.0  # the authors divide this term by 16, not 4
        return terms
