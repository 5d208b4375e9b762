"""Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons",
AAAI 2019."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from ..features import ModelInfo
from ..losses import ab_loss, match_spatial
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class ABConfig(LayerPairsConfig):  # layers: stages; their pre-activations are used (see below)
    margin: float = 1.0
    stage1_epochs: int = 30  # the paper's initialisation stage: AB loss only
    beta: float = 0.0  # AB weight in the main stage (the paper then trains on the task loss)
    scale: Literal["authors", "mean"] = "authors"  # how the per-neuron losses are summed (see below)


@register_method
class AB(LayerPairsMethod):
    """Activation boundaries: transfer whether each teacher neuron is active (pre-activation > 0), not its
    value. A connector (1x1 conv + BN) maps the student's pre-activation to the teacher's width and a
    squared hinge with margin ``m`` pushes it to the teacher's side of zero (paper eq. (5)).

    Layers are the stages of each model; for each, the pre-ReLU tensor is captured automatically (the
    input of the stage's last ReLU when it ends with one, e.g. ``layer1.2.relu:input``; the stage output
    in pre-activation networks). As in the paper, AB is an initialisation stage (``stage1_epochs``, 30
    as in the CRD benchmark), after which the student trains on the task loss (``beta: 0``; combine with
    ``kd`` for the paper's AB+KD). The connectors are trained and checkpointed with the student.

    ``scale: authors`` (default) sums the loss as the authors' code and RepDistiller do, so that the
    initialisation stage takes steps of the size their learning rate was set for: over each sample's
    elements, averaged over the batch, times 3/1000, with layer ``i`` of ``n`` (shallow to deep)
    weighted ``2^-(n-1-i)`` (the deepest 1, the one before 1/2, ...). At resnet32x4's stage shapes that is
    49x the per-element mean; ``scale: mean`` is that mean (kdkit's earlier default), whose steps are 49x smaller.
    """

    name = "ab"
    family = "feature"
    paper = "Heo et al. 2019, Knowledge Transfer via Distillation of Activation Boundaries"
    Config = ABConfig

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        s_layers, t_layers = self.student_specs, self.teacher_specs
        self.student_specs = [s_info.preactivation(s) for s in s_layers]
        self.teacher_specs = [t_info.preactivation(t) for t in t_layers]
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s_info.shape(s)[0], t_info.shape(t)[0], 1, bias=False),
                          nn.BatchNorm2d(t_info.shape(t)[0]))
            for s, t in zip(s_layers, t_layers))

    def _ab(self, out: Outputs) -> Tensor:
        authors, n = self.cfg.scale == "authors", len(self.connectors)
        total = 0.0
        for i, (conn, s, t) in enumerate(zip(self.connectors, self.student_specs, self.teacher_specs)):
            f_s, f_t = match_spatial(conn(out.s_feats[s]), out.t_feats[t])
            if authors:
                total = total + 2.0 ** (i - n + 1) * 3e-3 * ab_loss(f_s, f_t, self.cfg.margin, "sum")
            else:
                total = total + ab_loss(f_s, f_t, self.cfg.margin)
        return total

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"ab": self._ab(out)}

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"ab": self.cfg.beta * self._ab(out)} if self.cfg.beta else {}
