"""Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021 (ReviewKD)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import ModelInfo
from ..losses import hierarchical_context_loss, match_spatial
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method, warmup_ramp


class ABF(nn.Module):
    """Attention-based fusion: reduce a student feature to ``mid`` channels, fuse it with the (upsampled)
    fused feature of the next deeper level through two spatial attention maps, and project the result to
    the teacher's width. Returns (output for the loss, fused feature for the next shallower level)."""

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.out = nn.Sequential(nn.Conv2d(mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, deeper: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.att is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, deeper], 1))
            x = x * a[:, :1] + deeper * a[:, 1:]
        return self.out(x), x


@dataclass
class ReviewKDConfig(LayerPairsConfig):
    mid_channels: int = 64
    beta: float = 1.0
    warmup_epochs: int = 20  # the review term ramps up linearly over these epochs


@register_method
class ReviewKD(LayerPairsMethod):
    """Knowledge review: each teacher stage is matched by a fusion of the student's stage at the same
    level and all deeper student stages, so shallow teacher knowledge guides deep student layers.

    Student stages are processed from the deepest to the shallowest through attention-based fusion (ABF)
    modules; each output is compared with the teacher stage of its level by the hierarchical context loss
    (HCL, pyramid levels 4, 2, 1). ``L = CE + min((epoch + 1)/warmup, 1) * beta * sum_l HCL_l``.
    ``mid_channels=64`` (the paper's CIFAR fusion width is min(512, ...); 64 fits the CIFAR-width
    models), ``beta=1`` and a 20-epoch warm-up follow common CIFAR-100 re-implementations.
    """

    name = "reviewkd"
    family = "feature"
    paper = "Chen et al. 2021, Distilling Knowledge via Knowledge Review"
    Config = ReviewKDConfig

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        n = len(self.student_specs)
        self.abfs = nn.ModuleList(
            ABF(s_info.shape(s)[0], self.cfg.mid_channels, t_info.shape(t)[0], fuse=i < n - 1)
            for i, (s, t) in enumerate(zip(self.student_specs, self.teacher_specs)))

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        ramp = warmup_ramp(out.epoch, c.warmup_epochs)
        deeper, total = None, 0.0
        for abf, s, t in reversed(list(zip(self.abfs, self.student_specs, self.teacher_specs))):
            y, deeper = abf(out.s_feats[s], deeper)
            y, f_t = match_spatial(y, out.t_feats[t])
            total = total + hierarchical_context_loss(y, f_t)
        return {"reviewkd": ramp * c.beta * total}
