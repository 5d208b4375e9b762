"""Response-based losses on logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_targets(t_logits: Sequence[Tensor], temperature: float, ensemble: str = "logits",
                 weights: Tensor | None = None) -> Tensor:
    """Teacher probabilities at temperature T from one or several teachers' logits ``[B, K]``.

    ``ensemble="logits"`` averages the logits, then applies the softmax; ``"probs"`` averages the
    softmax outputs (the arithmetic mean of the teachers' predictive distributions, Hinton et al. 2015,
    section 2). With one teacher both are ``softmax(z_t / T)``. Teacher outputs are detached.
    ``weights`` (``[N]`` per teacher, or ``[N, B]`` per teacher and sample, normalised over teachers)
    replaces the plain mean by a weighted one.
    """
    if ensemble not in ("logits", "probs"):
        raise ValueError(f"ensemble must be 'logits' or 'probs', got {ensemble!r}")
    logits = [t.detach().float() for t in t_logits]
    if weights is not None and len(logits) > 1:
        w = weights.detach().float().to(logits[0].device)
        w = (w / w.sum(0, keepdim=True)).reshape(len(logits), -1, 1)  # [N, 1 or B, 1]
        stacked = torch.stack(logits)
        if ensemble == "logits":
            return F.softmax((w * stacked).sum(0) / temperature, dim=1)
        return (w * F.softmax(stacked / temperature, dim=2)).sum(0)
    if ensemble == "logits" or len(logits) == 1:
        return F.softmax(torch.stack(logits).mean(0) / temperature, dim=1)
    return torch.stack([F.softmax(t / temperature, dim=1) for t in logits]).mean(0)


def confidence_weights(t_logits: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Per-sample teacher weights ``[N, B]``: each teacher's probability of the true label (at T=1),
    normalised over the teachers; a teacher that is confidently right on a sample counts more there."""
    conf = torch.stack([F.softmax(t.detach().float(), dim=1).gather(1, targets[:, None])[:, 0] for t in t_logits])
    return conf / conf.sum(0, keepdim=True).clamp_min(1e-12)


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


def dkd_loss(s_logits: Tensor, t_logits: Tensor, target: Tensor, temperature: float, alpha: float,
             beta: float) -> Tensor:
    """Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, eq. (7)).

    ``alpha * TCKD + beta * NCKD`` with, at temperature T (both T^2-scaled, batch mean):
    TCKD = KL(b_t || b_s) over the binary split [p_target, 1 - p_target];
    NCKD = KL(p̂_t || p̂_s) over the softmax restricted to the non-target classes.
    ``s_logits``, ``t_logits``: [B, K]; ``target``: [B]. Teacher detached.
    """
    zs, zt = s_logits.float() / temperature, t_logits.detach().float() / temperature
    gt = F.one_hot(target, zs.shape[1]).bool()
    ps, pt = F.softmax(zs, 1), F.softmax(zt, 1)
    bs = torch.stack([ps[gt], 1 - ps[gt]], 1).clamp_min(1e-12)
    bt = torch.stack([pt[gt], 1 - pt[gt]], 1).clamp_min(1e-12)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean()
    masked = -1e4  # removes the target class from the non-target softmax
    log_ps_nt = F.log_softmax(zs.masked_fill(gt, masked), 1)
    pt_nt = F.softmax(zt.masked_fill(gt, masked), 1)
    nckd = F.kl_div(log_ps_nt, pt_nt, reduction="none").masked_fill(gt, 0.0).sum(1).mean()
    return temperature**2 * (alpha * tckd + beta * nckd)


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(s_logits: Tensor, t_logits: Tensor, temperature: float, beta: float, gamma: float) -> Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022, eq. (8)).

    With ``Y = softmax(z / T)`` [B, K]: inter-class relation ``1 - mean_i pearson(Y_s[i, :], Y_t[i, :])``
    and intra-class relation ``1 - mean_j pearson(Y_s[:, j], Y_t[:, j])``; returns
    ``T^2 * (beta * inter + gamma * intra)``. Teacher detached.
    """
    ys = F.softmax(s_logits.float() / temperature, 1)
    yt = F.softmax(t_logits.detach().float() / temperature, 1)
    inter = 1 - _pearson_rows(ys, yt).mean()
    intra = 1 - _pearson_rows(ys.t(), yt.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)
