"""Chen et al., "Learning Efficient Object Detection Models with Knowledge Distillation", NeurIPS 2017."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInfo
from ..losses.detection import expected_distance
from ..losses.detection_kd import bounded_regression, sigmoid_kd
from .base import Outputs, register_method
from .detection_base import DetectionFeatureConfig, DetectionMethod


@dataclass
class ChenConfig(DetectionFeatureConfig):
    hint: float = 0.5  # the hint (FitNets) term's factor
    soft: float = 1.0  # the weighted class distillation's factor
    bound: float = 0.5  # the paper's nu on the bounded regression loss
    background_weight: float = 1.5  # the paper's w_0: background weighted above the objects
    temperature: float = 1.0
    margin: float = 0.0  # the paper's m (here in strides squared)

    def validate(self) -> None:
        super().validate()
        if min(self.hint, self.soft, self.bound, self.background_weight, self.margin) < 0 or self.temperature <= 0:
            raise ValueError("hint, soft, bound, background_weight and margin must be >= 0 and temperature > 0")


@register_method
class ChenOD(DetectionMethod):
    """Three terms: **hint** learning, the student's feature maps (through an adaptation layer) regressed
    onto the teacher's by L2 (mean over elements, summed over the levels); **weighted class distillation**,
    the teacher's tempered class scores as soft targets at every point, points without an object weighted
    ``background_weight`` (the paper weights its background class 1.5: the class imbalance); and the
    **bounded regression loss**, the student's squared error on the box sides (in strides) at the
    positives, counted only where it is not ``margin`` better than the teacher's: the teacher is an upper
    bound, not a target. The paper's classifier has a softmax with a background class; a sigmoid detector's
    background is a point without an assigned object."""

    name = "chen_od"
    family = "response"
    paper = "Chen et al. 2017, Learning Efficient Object Detection Models with Knowledge Distillation"
    Config = ChenConfig
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self.pair_features(s_info, t_info)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        cfg = self.cfg
        s_cls, s_bins = self.split(out.s_logits)
        t_cls, t_bins = self.split(out.t_logits_mean)
        b, a, _, dist = self.positives(out)
        weight = s_cls.new_full(s_cls.shape[:2], cfg.background_weight)
        weight[b, a] = 1.0
        n_pos = max(len(b), 1)
        soft = (sigmoid_kd(s_cls, t_cls, cfg.temperature).sum(-1) * weight).sum() / n_pos
        hint = sum(((s - t) ** 2).mean() for s, t in self.feature_pairs(out))
        if len(b):
            s_dist, t_dist = expected_distance(s_bins[b, a]), expected_distance(t_bins[b, a])
            bound = bounded_regression(s_dist, t_dist, dist, cfg.margin).mean()
        else:
            bound = s_bins.sum() * 0.0
        return {"chen/hint": cfg.hint * hint, "chen/soft": cfg.soft * soft, "chen/bound": cfg.bound * bound}
