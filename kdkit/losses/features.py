"""Feature-based losses on intermediate activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015): mean squared error between the regressed student
    feature and the teacher's hint, both ``[B, C, H, W]`` (or ``[B, D]``); teacher detached.

    The paper writes ``1/2 ||u_h - r(v_g)||^2``; we average over elements (as RepDistiller's ``HintLoss``,
    whose beta=100 we use, does), so the weight is independent of the feature size.
    """
    return F.mse_loss(f_s.float(), f_t.detach().float())


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based spatial attention ``Q = vec(sum_c |A_c|^p)``, L2-normalised per sample.

    ``f`` ``[B, C, H, W]`` -> ``[B, H*W]``. Zagoruyko & Komodakis 2017, eq. (2) with F_sum^p; the
    channel mean is used instead of the sum, which only rescales Q before normalisation.
    """
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer loss for one layer pair (Zagoruyko & Komodakis, "Paying More Attention to
    Attention", ICLR 2017, eq. (2)).

    ``mean_{b, j} (Q_s[b, j] - Q_t[b, j])^2`` with ``Q`` from :func:`attention_map`. The paper takes the
    p=2 norm of the difference and divides beta by the number of attention elements and the batch size;
    the authors' code uses the mean squared difference, which is what we compute. Channel counts may
    differ; if spatial sizes differ, the larger feature map is average-pooled to the smaller size.
    """
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t.detach(), p)).pow(2).mean()


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two ``[B, C, H, W]`` maps to the smaller spatial size."""
    hs, ht = f_s.shape[-2:], f_t.shape[-2:]
    if hs == ht:
        return f_s, f_t
    size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
    return F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)


def _kernel(x: Tensor, y: Tensor, kind: str) -> Tensor:
    """Kernel matrix between the rows of ``x`` [B, N, D] and ``y`` [B, M, D] -> [B, N, M]."""
    dot = x @ y.transpose(1, 2)
    if kind == "linear":
        return dot
    if kind == "poly":
        return dot.pow(2)  # (x.y + c)^d with d=2, c=0
    if kind == "gaussian":
        sq = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(1) - 2 * dot
        return torch.exp(-sq.clamp_min(0) / 2.0)  # sigma^2 = 1 on unit-norm vectors
    raise ValueError(f"kernel must be linear, poly or gaussian, got {kind!r}")


def nst_mmd(f_s: Tensor, f_t: Tensor, kernel: str = "poly") -> Tensor:
    """Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", 2017, eq. (4)): squared MMD between the distributions of neuron selectivity
    patterns. Each channel's spatial map (flattened, L2-normalised) is one sample; per image,
    ``MMD^2 = mean k(s, s') + mean k(t, t') - 2 mean k(s, t)``; averaged over the batch.
    Channel counts may differ; spatial sizes are matched by pooling.
    """
    f_s, f_t = match_spatial(f_s.float(), f_t.detach().float())
    s = F.normalize(f_s.flatten(2), dim=2)  # [B, Cs, HW]
    t = F.normalize(f_t.flatten(2), dim=2)
    k_ss, k_tt, k_st = (_kernel(a, b, kernel).mean((1, 2)) for a, b in ((s, s), (t, t), (s, t)))
    return (k_ss + k_tt - 2 * k_st).mean()


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """Flow of solution procedure (Yim et al., "A Gift from Knowledge Distillation", CVPR 2017, eq. (1)):
    ``G[i, j] = sum_{h,w} F1[i, h, w] F2[j, h, w] / (H W)`` -> ``[B, C1, C2]``; ``f1`` is pooled to the
    spatial size of ``f2`` first."""
    if f1.shape[-2:] != f2.shape[-2:]:
        f1 = F.adaptive_avg_pool2d(f1, f2.shape[-2:])
    return f1.float().flatten(2) @ f2.float().flatten(2).transpose(1, 2) / (f2.shape[-1] * f2.shape[-2])


def ab_loss(s_pre: Tensor, t_pre: Tensor, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """Activation-boundary loss (Heo et al., "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019, eq. (5)): with ``rho = 1[t > 0]`` from the teacher's
    pre-activation, ``rho * relu(m - s)^2 + (1 - rho) * relu(m + s)^2``, where ``s`` is the student's
    (connected) pre-activation. Zero when every neuron is on the right side by ``m``.

    ``reduction``: ``"mean"`` over all elements, or ``"sum"`` over each sample's elements, averaged over
    the batch (the authors' code and RepDistiller, before their constant factors)."""
    s_pre, t_pre = match_spatial(s_pre.float(), t_pre.detach().float())
    active = (t_pre > 0).float()
    per_element = active * F.relu(margin - s_pre).pow(2) + (1 - active) * F.relu(margin + s_pre).pow(2)
    if reduction == "sum":
        return per_element.sum() / per_element.shape[0]
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return per_element.mean()


def factor_transfer(factor_s: Tensor, factor_t: Tensor, p: float = 1.0, factor: str = "flat") -> Tensor:
    """Factor transfer loss (Kim et al., "Paraphrasing Complex Network: Network Compression via Factor
    Transfer", NeurIPS 2018, eq. (3)) between the student's and the teacher's factors ``[B, C, H, W]``.

    Each factor is turned into a vector per sample and L2-normalised, then ``d = v_s - v_t`` is reduced
    to ``(mean_i |d_i|^p)^(1/p)`` per sample and averaged over the batch. Two vectors are in use:

    - ``"flat"``: the whole factor flattened, ``[B, C*H*W]``: the paper's and the authors' code
      (``F.normalize(x.view(B, -1))`` with ``nn.L1Loss``), which they ran with beta=500;
    - ``"spatial"``: first collapsed over channels as an attention map, ``mean_c F_c^2``, ``[B, H*W]``:
      RepDistiller's ``FactorTransfer`` (the CRD CIFAR-100 benchmark, beta=200).

    Eq. (3) writes the p-norm ``||d||_p``; both codes take the mean of ``|d|`` over the vector's elements
    (an L1 loss) and their weights were tuned on that scale, so we take the mean too. The two vectors
    give different scales ("spatial" is about 3x "flat" on random 128x8x8 ReLU factors, checked in
    ``tests/test_reference_agreement.py``), so each has its own beta.
    """
    if factor == "spatial":
        factor_s, factor_t = factor_s.float().pow(2).mean(1), factor_t.float().pow(2).mean(1)
    elif factor != "flat":
        raise ValueError(f"factor must be 'flat' or 'spatial', got {factor!r}")
    fs = F.normalize(factor_s.float().flatten(1), dim=1)
    ft = F.normalize(factor_t.detach().float().flatten(1), dim=1)
    return (fs - ft).abs().pow(p).mean(1).pow(1.0 / p).mean()


def vid_loss(mean: Tensor, log_var: Tensor, f_t: Tensor) -> Tensor:
    """Variational information distillation (Ahn et al., "Variational Information Distillation for
    Knowledge Transfer", CVPR 2019, eq. (2), (4)): negative log-likelihood of the teacher feature under a
    Gaussian with the regressed ``mean`` [B, C, H, W] and per-channel variance ``exp(log_var)`` [C],
    ``0.5 * (log sigma^2 + (t - mu)^2 / sigma^2)`` averaged over elements (constant dropped)."""
    var = log_var.exp().view(1, -1, *([1] * (mean.dim() - 2)))
    return 0.5 * (var.log() + (f_t.detach().float() - mean.float()).pow(2) / var).mean()


def input_gradient_attention(j_s: Tensor, j_t: Tensor) -> Tensor:
    """Gradient-based attention transfer (Zagoruyko & Komodakis 2017, section 3.2): distance between
    the input gradients ``J = dL/dx`` [B, C, H, W] of student and teacher. Each sample's gradient is
    L2-normalised first (the raw gradients of a confident teacher are orders of magnitude smaller than a
    student's); returns ``mean_b ||J_s/|J_s| - J_t/|J_t| ||^2``."""
    js = F.normalize(j_s.float().flatten(1), dim=1)
    jt = F.normalize(j_t.detach().float().flatten(1), dim=1)
    return (js - jt).pow(2).sum(1).mean()


def hierarchical_context_loss(f_s: Tensor, f_t: Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., "Distilling Knowledge via Knowledge Review",
    CVPR 2021, section 3.3): MSE at full resolution plus MSE after adaptive average pooling to each of
    ``levels`` (pooled sizes), each level weighted half the previous, normalised by the total weight."""
    f_t = f_t.detach().float()
    f_s = f_s.float()
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for size in levels:
        if size >= f_s.shape[-1]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
        total += weight
    return loss / total


def top_singular_vectors(f: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` right singular vectors ``[B, k, HW]`` (over spatial positions) and singular values
    ``[B, k]`` (no gradient) of each sample's ``[C, HW]`` feature matrix (``f``: [B, C, H, W]).

    The gradient of an SVD has ``1 / (s_i^2 - s_j^2)`` terms that explode when singular values are close,
    which they often are in a student's feature maps. So the SVD is computed without gradient (float64),
    and the vectors are returned as one power-iteration step ``normalise(M^T M v)`` from it: the same
    vectors (``v`` is an eigenvector of ``M^T M``), with a gradient that stays finite.
    """
    m = f.double().flatten(2)  # [B, C, HW]
    with torch.no_grad():
        _, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(k, s.shape[1])
    v = vh[:, :k]  # [B, k, HW]
    if m.requires_grad:
        v = F.normalize((v @ m.transpose(1, 2)) @ m, dim=2)  # (M^T M v)^T per vector
    return v, s[:, :k]


def align_singular_vectors(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector most aligned with it (largest |cosine|), with its sign
    flipped to agree (singular vectors are defined up to sign). ``v_s``: [B, ks, D], ``v_t``: [B, kt, D]
    -> [B, kt, D]."""
    cos = v_t.detach() @ v_s.transpose(1, 2)  # [B, kt, ks]
    best = cos.abs().argmax(2)  # [B, kt]
    picked = torch.gather(v_s, 1, best.unsqueeze(2).expand(-1, -1, v_s.shape[2]))
    sign = torch.gather(cos, 2, best.unsqueeze(2)).sign()
    return picked * torch.where(sign == 0, torch.ones_like(sign), sign)


def svd_rbf(v_now: Tensor, v_prev: Tensor, width: float = 8.0) -> Tensor:
    """``G[b, i, j] = exp(-||v_now[b, i] - v_prev[b, j]||^2 / width)``: how the singular directions of one
    layer relate to those of the previous one (KD-SVD's distilled feature vector)."""
    return torch.exp(-(v_now.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2).sum(-1) / width)
