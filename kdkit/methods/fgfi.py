"""Wang et al., "Distilling Object Detectors with Fine-grained Feature Imitation", CVPR 2019."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..features import ModelInfo
from ..losses.detection_kd import imitation_mask
from ..tasks.boxes import points
from ..tasks.detection import targets_valid
from .base import Outputs, register_method
from .detection_base import DetectionFeatureConfig, DetectionMethod


@dataclass
class FGFIConfig(DetectionFeatureConfig):
    weight: float = 0.01  # the paper's lambda
    psi: float = 0.5  # the paper's threshold factor on each box's best anchor IoU
    anchor_scale: float = 8.0  # each cell's anchor side, in strides (the detector's ATSS anchors)

    def validate(self) -> None:
        super().validate()
        if not 0 < self.psi < 1 or self.anchor_scale <= 0:
            raise ValueError(f"psi must be in (0, 1) and anchor_scale > 0, got {self.psi}, {self.anchor_scale}")


@register_method
class FGFI(DetectionMethod):
    """Fine-grained feature imitation: on each feature pair (default: the FPN levels), the student's map
    through an adaptation layer imitates the teacher's at the cells near objects only, the cells whose
    anchor overlaps a box by more than ``psi`` times that box's best anchor overlap on the level:
    ``sum over masked cells and channels of (adapt(s) - t)^2 / (2 N_p)``, ``N_p`` the masked cells of all
    levels. The paper uses Faster R-CNN's 9 anchors per cell on one map; here each cell has one square
    anchor of ``anchor_scale`` strides, and the mask is taken per FPN level."""

    name = "fgfi"
    family = "feature"
    paper = "Wang et al. 2019, Distilling Object Detectors with Fine-grained Feature Imitation"
    Config = FGFIConfig
    uses_teacher_features = True
    temperature_range = None

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self.pair_features(s_info, t_info)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        _, boxes, valid = targets_valid(out.targets)
        ih, iw = self.task.layout.image_size
        total, cells = out.s_logits.new_zeros(()), 0
        for s, t in self.feature_pairs(out):
            h, w = t.shape[-2:]
            stride = ih / h
            centres = points([(h, w)], (stride,), t.device)
            half = self.cfg.anchor_scale * stride / 2
            anchors = torch.cat([centres - half, centres + half], 1)
            mask = imitation_mask(anchors, boxes, valid, self.cfg.psi).view(-1, 1, h, w).to(s.dtype)
            total = total + ((s - t).square() * mask).sum()
            cells += int(mask.sum())
        return {"fgfi": total / (2 * max(cells, 1))}
