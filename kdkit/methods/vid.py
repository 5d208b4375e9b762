"""Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import ModelInfo
from ..losses import match_spatial, vid_loss
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


class VIDHead(nn.Module):
    """Predicts the mean of the teacher feature from the student's (three 1x1 convolutions) and holds a
    learned per-channel variance ``softplus(alpha) + eps``, initialised to ``init_var``."""

    def __init__(self, c_s: int, c_t: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.mean = nn.Sequential(nn.Conv2d(c_s, c_t, 1), nn.ReLU(), nn.Conv2d(c_t, c_t, 1), nn.ReLU(),
                                  nn.Conv2d(c_t, c_t, 1))
        self.eps = eps
        self.alpha = nn.Parameter(torch.full((c_t,), math.log(math.expm1(init_var - eps))))

    def forward(self, f_s: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(f_s), torch.log(F.softplus(self.alpha) + self.eps)


@dataclass
class VIDConfig(LayerPairsConfig):
    beta: float = 1.0
    init_var: float = 5.0


@register_method
class VID(LayerPairsMethod):
    """Variational information distillation: maximise a variational lower bound of the mutual
    information between teacher and student features, i.e. minimise the Gaussian negative log-likelihood
    of the teacher feature given the student's (a regressed mean, a learned per-channel variance).

    ``L = CE + beta * sum_l mean(0.5 log sigma_l^2 + (t_l - mu_l(s_l))^2 / (2 sigma_l^2))`` (paper eq. (2),
    (4); the constant is dropped). beta=1 as in the CRD CIFAR-100 benchmark; the regressor heads and the
    variances are trained and checkpointed with the student.
    """

    name = "vid"
    family = "feature"
    paper = "Ahn et al. 2019, Variational Information Distillation for Knowledge Transfer"
    Config = VIDConfig

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        self.heads = nn.ModuleList(VIDHead(s_info.shape(s)[0], t_info.shape(t)[0], self.cfg.init_var)
                                   for s, t in zip(self.student_specs, self.teacher_specs))

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        total = 0.0
        for head, s, t in zip(self.heads, self.student_specs, self.teacher_specs):
            f_s, f_t = match_spatial(out.s_feats[s], out.t_feats[t])
            mean, log_var = head(f_s)
            total = total + vid_loss(mean, log_var, f_t)
        return {"vid": self.cfg.beta * total}
