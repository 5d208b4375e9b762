"""Adversarial examples for robust distillation and robust accuracy: projected gradient descent (PGD,
Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018) in an L-inf
ball, as adversarially robust distillation uses it (Goldblum et al., AAAI 2020: epsilon 8/255, step 2/255,
10 steps, a uniform random start, cross-entropy against the labels)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PGD:
    """An L-inf PGD attack. ``epsilon`` and ``step_size`` are in pixel units ([0, 1] images) when the
    inputs' normalisation is given to :meth:`perturb` (kdkit's loaders normalise ``(x - mean) / std``
    per channel: the ball is scaled by ``1 / std`` per channel and the result kept inside the image range),
    in the inputs' own units otherwise (no range then)."""

    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        if not self.epsilon >= 0:
            raise ValueError(f"PGD epsilon must be >= 0 (the L-inf radius, in pixel units of [0, 1] images), "
                             f"got {self.epsilon}")
        if not self.step_size > 0:
            raise ValueError(f"PGD step_size must be > 0, got {self.step_size}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"PGD steps must be an integer >= 1, got {self.steps!r}")

    def perturb(self, model: Callable[[Tensor], Tensor], x: Tensor, target: Tensor, mean: Tensor | None = None,
                std: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Inputs within ``epsilon`` of ``x`` that raise ``model``'s summed cross-entropy on ``target``
        (detached). ``mean``/``std`` broadcast against ``x`` (``[1, C, 1, 1]``). ``generator`` draws the
        random start (a fixed one makes an evaluation reproducible). The model's mode is left as it is."""
        x = x.detach()
        scale = (1.0 / std) if std is not None else torch.ones((), device=x.device)
        eps, step = self.epsilon * scale, self.step_size * scale
        lower = upper = None
        if mean is not None and std is not None:
            lower, upper = (0.0 - mean) / std, (1.0 - mean) / std
        adv = x
        if self.random_start and self.epsilon > 0:
            noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
            adv = x + (noise.to(x.device, x.dtype) * 2 - 1) * eps  # not clipped to the image range (as ARD's code)
        for _ in range(self.steps):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(adv).float(), target, reduction="sum")
                grad, = torch.autograd.grad(loss, adv)
            adv = self._project(adv.detach() + step * grad.sign(), x, eps, lower, upper)
        return adv.detach()

    @staticmethod
    def _project(adv: Tensor, x: Tensor, eps: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps)
        if lower is not None and upper is not None:
            adv = torch.minimum(torch.maximum(adv, lower), upper)
        return adv
