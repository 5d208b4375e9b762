"""Guo et al., "Online Knowledge Distillation via Collaborative Learning", CVPR 2020 (KDCL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import kd_loss
from .base import MethodConfig, Outputs, register_method
from .dml import CohortMethod


def ensemble_logits(logits: list[Tensor], targets: Tensor, how: str) -> Tensor:
    """The cohort's teacher logits ``z_t`` ``[B, K]`` from the networks' logits ``z_i``, detached:

    - ``mean``: ``mean_i z_i``;
    - ``min_logit`` (KDCL-MinLogit): ``z_t^c = min_i (z_i^c - z_i^y)``, each network's logits shifted so
      that its true-class logit is 0, then the smallest value of each class over the networks: the
      softest target that keeps every network's margin of the true class;
    - ``best``: per sample, the logits of the network with the lowest cross-entropy on that sample;
    - ``linear`` (KDCL-Linear): ``sum_i w_i z_i`` with the weights minimising the cross-entropy of the
      combination on held-out data; here each half of the batch is combined with weights fitted on the
      other half (cross-fitting), so no sample's target is fitted on its own label.
    """
    z = torch.stack([t.detach().float() for t in logits])  # [N, B, K]
    if how == "mean":
        return z.mean(0)
    if how == "linear":
        half = z.shape[1] // 2
        if half == 0:
            return z.mean(0)
        parts = [slice(0, half), slice(half, None)]
        out = torch.empty_like(z[0])
        for fit, use in zip(parts, reversed(parts)):
            w = linear_weights(z[:, fit], targets[fit])
            out[use] = torch.einsum("n,nbk->bk", w, z[:, use])
        return out
    idx = targets.view(1, -1, 1).expand(z.shape[0], -1, 1)
    if how == "min_logit":
        return (z - z.gather(2, idx)).min(0).values
    if how == "best":
        ce = -F.log_softmax(z, dim=2).gather(2, idx).squeeze(2)  # [N, B]
        pick = ce.argmin(0)  # [B]
        return z[pick, torch.arange(z.shape[1], device=z.device)]
    raise ValueError(f"unknown ensemble '{how}'")


def linear_weights(z: Tensor, targets: Tensor, steps: int = 20) -> Tensor:
    """``w`` ``[N]`` minimising ``CE(sum_i w_i z_i, y)`` over the batch, by L-BFGS from ``1/N`` (``z``
    ``[N, B, K]`` detached)."""
    w = torch.full((z.shape[0],), 1.0 / z.shape[0], dtype=torch.float64, device=z.device, requires_grad=True)
    z64 = z.double()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(torch.einsum("n,nbk->bk", w, z64), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().to(z.dtype)


@dataclass
class KDCLConfig(MethodConfig):
    ensemble: Literal["min_logit", "mean", "best", "linear"] = "min_logit"
    temperature: float = 2.0
    networks: list[str] | None = None  # the cohort: default the student and every peer

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class KDCL(CohortMethod):
    """Online KD via collaborative learning: ``N >= 2`` networks of any architectures train together; each
    sees its own randomly augmented view of the batch (``data.views: N``, network ``k`` gets view ``k``),
    and all of them learn from one teacher built from their logits on those views:
    ``L_i = CE(z_i, y) + T^2 KL(softmax(z_t / T) || softmax(z_i / T))``, ``z_t`` detached. The teacher
    logits ``z_t`` (``ensemble``): ``min_logit`` (KDCL-MinLogit, ``z_t^c = min_i (z_i^c - z_i^y)``),
    ``mean`` (the plain mean of the logits), ``best`` (per sample, the network with the lowest
    cross-entropy) or ``linear`` (KDCL-Linear, weights fitted on the other half of the batch: see
    :func:`ensemble_logits`). The paper's generalisation-error weighting is not implemented. T=2 is our
    default, not checked against the authors' settings (their code was not available to us)."""

    name = "kdcl"
    family = "online"
    paper = "Guo et al. 2020, Online Knowledge Distillation via Collaborative Learning"
    Config = KDCLConfig
    needs_teacher = False
    needs_peers = 1
    needs_views = True

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        cohort, t = self.cohort(out), self.cfg.temperature
        z_t = ensemble_logits([out.logits[n] for n in cohort], out.targets, self.cfg.ensemble)
        q = F.softmax(z_t / t, dim=1)
        return {self.term(n): kd_loss(out.logits[n], q, t) for n in cohort}
