"""Response-based losses on logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_targets(t_logits: Sequence[Tensor], temperature: float, ensemble: str = "logits") -> Tensor:
    """Teacher probabilities at temperature T from one or several teachers' logits ``[B, K]``.

    ``ensemble="logits"`` averages the logits, then applies the softmax; ``"probs"`` averages the
    softmax outputs (the arithmetic mean of the teachers' predictive distributions, Hinton et al. 2015,
    section 2). With one teacher both are ``softmax(z_t / T)``. Teacher outputs are detached.
    """
    if ensemble not in ("logits", "probs"):
        raise ValueError(f"ensemble must be 'logits' or 'probs', got {ensemble!r}")
    logits = [t.detach().float() for t in t_logits]
    if ensemble == "logits" or len(logits) == 1:
        return F.softmax(torch.stack(logits).mean(0) / temperature, dim=1)
    return torch.stack([F.softmax(t / temperature, dim=1) for t in logits]).mean(0)


def kd_loss(s_logits: Tensor, p_teacher: Tensor, temperature: float) -> Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    ``T^2 * KL(p_t || softmax(z_s / T))`` averaged over the batch, where ``p_t`` ``[B, K]`` holds the
    teacher's soft targets (see :func:`soft_targets`) and ``s_logits`` ``[B, K]`` the student's logits.
    The T^2 factor keeps the gradient scale independent of T (paper, section 2.1).
    """
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_teacher, reduction="batchmean") * temperature**2


def logit_mse(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """L2 matching of logits (Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014):
    mean over batch and classes of ``(z_s - z_t)^2``; ``[B, K]`` each, teacher detached."""
    return F.mse_loss(s_logits.float(), t_logits.detach().float())
