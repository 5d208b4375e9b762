"""Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..features import ModelInfo
from ..losses.detection_kd import GlobalContext, fgd_attention, fgd_attention_loss, fgd_focal, fgd_masks
from ..tasks.detection import targets_valid
from .base import Outputs, register_method
from .detection_base import DetectionFeatureConfig, DetectionMethod


@dataclass
class FGDConfig(DetectionFeatureConfig):
    # MMRazor's FGDLoss defaults
    temperature: float = 0.5
    alpha: float = 0.001  # foreground feature loss
    beta: float = 0.0005  # background feature loss
    gamma: float = 0.001  # attention loss
    lambda_: float = 0.000005  # global relation loss

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0 or min(self.alpha, self.beta, self.gamma, self.lambda_) < 0:
            raise ValueError("temperature must be > 0 and alpha, beta, gamma, lambda_ >= 0")


@register_method
class FGD(DetectionMethod):
    """Focal and global distillation on each feature pair (default: the FPN levels): **focal**, the squared
    feature difference weighted by the teacher's spatial and channel attention (``temperature``), split into
    the boxes' cells (each box's weighted by one over its area) and the background (normalised); an
    **attention** loss between the two networks' attention; and a **global** relation loss between
    GcBlock outputs of the two maps. The student's map first goes through a 1x1 convolution to the
    teacher's channels where they differ (the authors' ``align`` layer). Formulas: MMRazor's ``fgd_loss.py``."""

    name = "fgd"
    family = "feature"
    paper = "Yang et al. 2022, Focal and Global Knowledge Distillation for Detectors"
    Config = FGDConfig
    uses_teacher_features = True
    temperature_range = None  # an attention temperature

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self.pair_features(s_info, t_info)
        self.relations = nn.ModuleList([GlobalContext(t_info.shape(t)[0]) for t in self.teacher_specs])

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        cfg = self.cfg
        _, boxes, valid = targets_valid(out.targets)
        terms = {"fgd/fg": 0.0, "fgd/bg": 0.0, "fgd/attention": 0.0, "fgd/global": 0.0}
        for (s, t), relation in zip(self.feature_pairs(out), self.relations):
            s, t = s.float(), t.float()
            fg, bg = fgd_masks(boxes, valid, self.task.layout.image_size, tuple(t.shape[-2:]))
            sp_t, ch_t = fgd_attention(t, cfg.temperature)
            sp_s, ch_s = fgd_attention(s, cfg.temperature)
            f, b = fgd_focal(s, t, fg, bg, sp_t, ch_t)
            terms["fgd/fg"] = terms["fgd/fg"] + cfg.alpha * f
            terms["fgd/bg"] = terms["fgd/bg"] + cfg.beta * b
            terms["fgd/attention"] = terms["fgd/attention"] + cfg.gamma * fgd_attention_loss(sp_s, ch_s, sp_t, ch_t)
            terms["fgd/global"] = terms["fgd/global"] + cfg.lambda_ * relation(s, t)
        return terms
