"""Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017 (flow of solution procedure, FSP)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..features import ModelInfo
from ..losses import fsp_matrix
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class FSPConfig(LayerPairsConfig):
    stage1_epochs: int = 30  # the paper's first stage: FSP loss only
    beta: float = 0.0  # FSP weight in the main stage (the paper trains on the task loss alone there)


@register_method
class FSP(LayerPairsMethod):
    """Flow of solution procedure: the ``[C_i, C_{i+1}]`` Gram matrix between consecutive stage outputs
    describes how a network transforms features; the student learns the teacher's flow.

    The paper trains in two stages: (1) minimise ``sum_i mean (G_s^i - G_t^i)^2`` alone
    (``stage1_epochs``, 30 as in the CRD benchmark's initialisation stage), then (2) the task loss
    (``beta: 0``). Where the student's channel counts differ from the teacher's, a 1x1 convolution maps
    each student stage to the teacher's width (our addition: FSP matrices must have equal shapes); these
    adapters are trained with the student. Stage pairs with different resolutions are pooled.
    """

    name = "fsp"
    family = "feature"
    paper = "Yim et al. 2017, A Gift from Knowledge Distillation"
    Config = FSPConfig
    relates_consecutive_layers = True

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        self.adapters = nn.ModuleList(
            nn.Identity() if s_info.shape(s)[0] == t_info.shape(t)[0]
            else nn.Conv2d(s_info.shape(s)[0], t_info.shape(t)[0], 1, bias=False)
            for s, t in zip(self.student_specs, self.teacher_specs))

    def _fsp(self, out: Outputs) -> Tensor:
        fs = [a(out.s_feats[s]) for a, s in zip(self.adapters, self.student_specs)]
        ft = [out.t_feats[t] for t in self.teacher_specs]
        total = 0.0
        for i in range(len(fs) - 1):
            g_s, g_t = fsp_matrix(fs[i], fs[i + 1]), fsp_matrix(ft[i], ft[i + 1]).detach()
            if g_s.shape[-1] != g_t.shape[-1] or g_s.shape[-2] != g_t.shape[-2]:
                raise ConfigError(f"fsp: matrix shapes differ {tuple(g_s.shape)} vs {tuple(g_t.shape)}")
            total = total + (g_s - g_t).pow(2).mean()
        return total

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"fsp": self._fsp(out)}

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"fsp": self.cfg.beta * self._fsp(out)} if self.cfg.beta else {}
