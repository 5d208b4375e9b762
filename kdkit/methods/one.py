"""Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Method, MethodConfig, Outputs, register_method


def one_kl(branch: Tensor, ensemble: Tensor, temperature: float, detach: bool = True) -> Tensor:
    """``T^2 * mean_b sum_c q_c (log q_c - log p_c)`` with ``q = softmax(z_e/T) + 1e-7`` (the authors' code
    adds 1e-7 to the target), detached unless ``detach=False``, and ``p = softmax(z_branch/T)``."""
    t = temperature
    q = (F.softmax((ensemble.detach() if detach else ensemble).float() / t, dim=1) + 1e-7)
    log_p = F.log_softmax(branch.float() / t, dim=1)
    return t * t * (q * (q.log() - log_p)).sum(1).mean()


def sigmoid_rampup(epoch: float, length: float) -> float:
    """``exp(-5 (1 - min(e, L)/L)^2)``: the consistency ramp the authors' code uses (from Laine & Aila)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


@dataclass
class ONEConfig(MethodConfig):
    temperature: float = 3.0  # the authors' code
    rampup_epochs: int = 80  # the KL weight rises over these epochs (80 of 300 in the paper's recipe)

    def validate(self) -> None:
        if self.temperature <= 0 or self.rampup_epochs < 0:
            raise ValueError("temperature must be > 0 and rampup_epochs >= 0")


@register_method
class ONE(Method):
    """On-the-fly native ensemble: the student is a branched network with a gate (model transform
    ``{name: branch, at: <stage>, n: 3, gate: true}``): a shared trunk, ``m`` branches, and a gate
    (pooled trunk features -> FC -> BN -> ReLU -> softmax) whose weights combine the branch logits into the
    ensemble ``z_e = sum_i g_i z_i`` (the network's output). Loss (paper eq. (5)): ``CE(z_e)`` (the
    trainer's label loss on the network output) ``+ sum_i CE(z_i) + w(e) sum_i T^2 KL(q_e || p_i)`` at
    T=3, the ensemble target detached, with the authors' ramp ``w(e) = exp(-5 (1 - e/80)^2)`` over the
    first 80 epochs (``rampup_epochs``). Deploy the ensemble (the network) or one branch (``kdkit export
    --branch k``)."""

    name = "one"
    family = "online"
    paper = "Lan et al. 2018, Knowledge Distillation by On-the-Fly Native Ensemble"
    Config = ONEConfig
    needs_teacher = False
    student_transform = {"name": "branch", "n": 3, "gate": True}  # split before the last stage

    def setup(self, s_info, t_info) -> None:
        heads = sorted(p for p in s_info.layers if p.count(".") == 1 and p.startswith("heads."))
        if len(heads) < 2 or "gate" not in s_info.layers:
            raise ConfigError("one needs a branched student with a gate: model: {name: ..., transforms: "
                              "[{name: branch, at: <module path>, n: 3, gate: true}]}")
        self.student_specs = sorted(heads, key=lambda p: int(p.split(".")[1]))

    def deployed(self) -> str:
        return "branch0/"  # one branch, as the paper's ONE figures (the gated ensemble is its "ONE-E")

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        w = sigmoid_rampup(out.epoch, self.cfg.rampup_epochs)
        terms = {}
        for k, spec in enumerate(self.student_specs):
            z = out.s_feats[spec]
            terms[f"one/ce{k}"] = F.cross_entropy(z.float(), out.targets)
            terms[f"one/kl{k}"] = w * one_kl(z, out.s_logits, self.cfg.temperature)
        return terms
