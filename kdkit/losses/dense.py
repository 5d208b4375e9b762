"""Losses on dense (per-pixel) outputs and features: segmentation distillation.

Shapes: logits and features ``[B, C, H, W]``; student and teacher maps of the same spatial size (the
methods resize them first where they differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_kd(s_logits: Tensor, t_logits: Tensor, temperature: float = 1.0, reduction: str = "sum") -> Tensor:
    """Pixel-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic Segmentation",
    CVPR 2019, eq. 1): every pixel's class distribution of the student matched to the teacher's.

    ``T^2 * sum_b (1 / HW) sum_{h,w} sum_c -p_t log p_s`` with ``p = softmax(z / T)`` over classes: the
    authors' code (``CriterionPixelWise``) takes the cross-entropy (the KL divergence plus the teacher's
    entropy, which has no gradient), divides by the pixels of one map and sums over the batch; it has no
    temperature (T=1 here by default; T^2 keeps the gradient scale for other T). ``reduction="mean"``
    divides by the batch size as well, so that a weight means the same at any batch size."""
    b, c, h, w = s_logits.shape
    p_t = F.softmax(t_logits.detach().float() / temperature, dim=1)
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    loss = -(p_t * log_p_s).sum() / (h * w) * temperature ** 2
    return loss / b if reduction == "mean" else loss


def pair_similarity(feat: Tensor, detach_norm: bool = True) -> Tensor:
    """Cosine similarities between all pairs of spatial positions: ``[B, HW, HW]`` of ``feat``
    ``[B, C, H, W]``. ``detach_norm``: the norms are constants in the backward pass, as in the authors' code."""
    feat = feat.float()
    norm = feat.pow(2).sum(1, keepdim=True).sqrt() + 1e-8
    unit = (feat / (norm.detach() if detach_norm else norm)).flatten(2)
    return torch.einsum("bcm,bcn->bmn", unit, unit)


def pairwise_distillation(f_s: Tensor, f_t: Tensor, scale: float = 0.5) -> Tensor:
    """Pair-wise distillation (Liu et al. 2019, eq. 2): the similarity graph of feature nodes.

    Nodes are the cells of a max pooling with windows of ``int(scale * side)`` pixels (ceil mode; the
    authors' ``CriterionPairWiseforWholeFeatAfterPool``, whose models use ``scale=0.5``: 2x2 nodes), and
    ``L = sum_b sum_{i,j} (a^s_ij - a^t_ij)^2 / (N^2 B)`` with ``a_ij`` the cosine
    similarity of nodes ``i`` and ``j`` and ``N`` the number of nodes. The channel counts may differ."""
    h, w = f_t.shape[-2:]
    kernel = (max(1, int(h * scale)), max(1, int(w * scale)))
    pool = lambda f: F.max_pool2d(f, kernel, kernel, ceil_mode=True)  # noqa: E731
    a_s, a_t = pair_similarity(pool(f_s)), pair_similarity(pool(f_t.detach()))
    n = a_t.shape[-1]
    return (a_t - a_s).pow(2).sum() / (n * n) / f_t.shape[0]


def channel_wise_divergence(s_map: Tensor, t_map: Tensor, tau: float = 1.0) -> Tensor:
    """Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021, eq. 3-4): each channel's map becomes a distribution over its ``HW`` positions,
    ``softmax(map / tau)``, and the student's is pulled to the teacher's by KL, scaled by ``tau^2`` and
    averaged over channels and images: ``tau^2 / (B C) sum_{b,c} KL(p_t || p_s)`` (MMRazor's
    ``ChannelWiseDivergence``)."""
    b, c, h, w = s_map.shape
    t = t_map.detach().float().reshape(b * c, h * w) / tau
    s = s_map.float().reshape(b * c, h * w) / tau
    p_t = F.softmax(t, dim=1)
    kl = (p_t * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum()
    return kl * tau ** 2 / (b * c)


def gradient_penalty(critic, real: Tensor, fake: Tensor, weight: Tensor | None = None) -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017):
    ``mean((||grad critic(x_hat)||_2 - 1)^2)`` at ``x_hat = eps * real + (1 - eps) * fake``, ``eps``
    uniform per sample (drawn from ``weight`` when given, ``[B]``, for reproducible tests)."""
    b = real.shape[0]
    eps = (weight if weight is not None else torch.rand(b, device=real.device)).view(b, *[1] * (real.dim() - 1))
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
