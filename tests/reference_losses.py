"""The loss formulas of the reference implementations, written out again for agreement tests.

Each function computes what the named reference computes (RepDistiller, mdistiller, the authors' code),
on the tensors that code receives, with its reductions and constants, so that a test can compare kdkit's
value and input gradient with it on the same inputs. They are independent re-derivations from those
codes' arithmetic, deliberately plain; none is used by kdkit itself. ``benchmarks/calibrate_weights.py``
uses them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    hs, ht = f_s.shape[2], f_t.shape[2]
    if hs > ht:
        f_s = F.adaptive_avg_pool2d(f_s, (ht, ht))
    elif ht > hs:
        f_t = F.adaptive_avg_pool2d(f_t, (hs, hs))
    return f_s, f_t


def at(f_s: Tensor, f_t: Tensor, p: int = 2) -> Tensor:
    """Attention transfer, one layer pair: the authors' ``at_loss`` (RepDistiller's ``Attention``)."""
    f_s, f_t = _pool_to_smaller(f_s, f_t)

    def amap(f: Tensor) -> Tensor:
        return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1), dim=1)

    return (amap(f_s) - amap(f_t)).pow(2).mean()


def nst(f_s: Tensor, f_t: Tensor) -> Tensor:
    """NST with the polynomial kernel (d=2, c=0), one layer pair: RepDistiller's ``NSTLoss``."""
    f_s, f_t = _pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.reshape(*f_s.shape[:2], -1), dim=2)
    t = F.normalize(f_t.reshape(*f_t.shape[:2], -1), dim=2)

    def k(a: Tensor, b: Tensor) -> Tensor:  # [B, Ca, Cb] of (a_i . b_j)^2
        return torch.einsum("bid,bjd->bij", a, b).pow(2)

    return k(t, t).mean().detach() + k(s, s).mean() - 2 * k(s, t).mean()


def expanded_pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    """RepDistiller's ``pdist``: distances from ``|a|^2 + |b|^2 - 2 a.b`` clamped at eps, zero diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
    d[range(len(e)), range(len(e))] = 0
    return d


def exact_pdist(e: Tensor) -> Tensor:
    """Distances computed in float64 from the differences: the quantity both formulas approximate."""
    e64 = e.double()
    sq = (e64.unsqueeze(0) - e64.unsqueeze(1)).pow(2).sum(2)
    positive = sq > 0
    return torch.where(positive, sq.clamp_min(1e-300).sqrt(), torch.zeros_like(sq)).to(e.dtype)


def rkd_distance(e_s: Tensor, e_t: Tensor, pdist=expanded_pdist) -> Tensor:
    """RKD distance term (unweighted): RepDistiller's ``RKDLoss`` / mdistiller's ``rkd_loss``."""
    def normed(e: Tensor) -> Tensor:
        d = pdist(e.reshape(e.shape[0], -1))
        return d / d[d > 0].mean()

    with torch.no_grad():
        t = normed(e_t)
    return F.smooth_l1_loss(normed(e_s), t)


def rkd_angle(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RKD angle term (unweighted), as in RepDistiller's ``RKDLoss``."""
    def cosines(e: Tensor) -> Tensor:
        e = e.reshape(e.shape[0], -1)
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)

    with torch.no_grad():
        t = cosines(e_t)
    return F.smooth_l1_loss(cosines(e_s), t)


def irg_edge(f_s: Tensor, f_t: Tensor, pdist=exact_pdist) -> Tensor:
    """IRG edge term on pooled features: MSE of the mean-normalised distance matrices."""
    def normed(f: Tensor) -> Tensor:
        v = f.mean((2, 3)) if f.dim() == 4 else f.reshape(f.shape[0], -1)
        d = pdist(v)
        return d / d[d > 0].mean()

    return F.mse_loss(normed(f_s), normed(f_t).detach())


def similarity(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Similarity preserving: RepDistiller's ``Similarity``."""
    b = f_s.shape[0]
    gs = F.normalize(f_s.reshape(b, -1) @ f_s.reshape(b, -1).t())
    gt = F.normalize(f_t.reshape(b, -1) @ f_t.reshape(b, -1).t())
    return (gt - gs).pow(2).sum() / (b * b)


def pkt(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT with the cosine kernel: RepDistiller's ``PKT.cosine_similarity_loss``."""
    def cond(f: Tensor) -> Tensor:
        f = F.normalize(f.reshape(f.shape[0], -1), dim=1)
        k = (f @ f.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = cond(f_s), cond(f_t)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def factor_spatial(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """Factor transfer on channel-collapsed factors: RepDistiller's ``FactorTransfer`` (p1=2, p2=1)."""
    factor_s, factor_t = _pool_to_smaller(factor_s, factor_t)

    def v(f: Tensor) -> Tensor:
        return F.normalize(f.pow(2).mean(1).reshape(f.shape[0], -1), dim=1)

    return (v(factor_s) - v(factor_t)).abs().mean()


def factor_flat(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """Factor transfer on flattened factors: the authors' ``utils.FT`` with ``nn.L1Loss``."""
    def v(f: Tensor) -> Tensor:
        return F.normalize(f.reshape(f.shape[0], -1), dim=1)

    return (v(factor_s) - v(factor_t)).abs().mean()


def ab_init(sources: list[Tensor], targets: list[Tensor], margin: float = 1.0) -> Tensor:
    """The activation-boundary initialisation loss summed over layers (shallow to deep), as the authors'
    CIFAR code and RepDistiller's ``ABLoss`` compute it: per-sample sums, layer weights 2^(i-n+1), x3/1000."""
    n, total = len(sources), 0.0
    for i, (s, t) in enumerate(zip(sources, targets)):
        per = ((s + margin).pow(2) * ((s > -margin) & (t <= 0)).float()
               + (s - margin).pow(2) * ((s <= margin) & (t > 0)).float())
        total = total + 2.0 ** (i - n + 1) * per.abs().sum() / s.shape[0] / 1000 * 3
    return total


def correlation(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RepDistiller's ``Correlation`` (CC as the authors shared it) on the two linear embeddings."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def kdsvd(g_s: list[Tensor], g_t: list[Tensor], k: int = 1) -> Tensor:
    """RepDistiller's ``KDSVD`` summed over its layer terms: SVD of each ``[HW, C]`` feature matrix, the
    student's top k+3 right singular vectors aligned to the teacher's top k, scaled by the teacher's
    normalised singular values, then an element-wise RBF between consecutive layers, summed, / B."""
    def svd(f: Tensor, n: int) -> tuple[Tensor, Tensor]:
        x = f.reshape(f.shape[0], f.shape[1], -1).transpose(1, 2)  # [B, HW, C]
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(1, 2)  # [B, C, C'] right singular vectors as columns
        v = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
        s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
        return F.normalize(v[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)

    total, prev = 0.0, None
    for f_s, f_t in zip(g_s, g_t):
        v_t, s_t = svd(f_t, k)
        v_s, _ = svd(f_s, k + 3)
        cos = v_s.transpose(1, 2) @ v_t  # [B, k+3, k]
        best = cos.abs().max(1, keepdim=True).values
        v_s = v_s @ torch.where(best == cos.abs(), cos.sign(), torch.zeros_like(cos))
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if prev is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev[1].unsqueeze(1)).pow(2) / 8)
            sq = (rbf_s - rbf_t.detach()).pow(2)
            total = total + torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum() / f_s.shape[0]
        prev = (v_s, v_t)
    return total


def kd(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: RepDistiller's ``DistillKL`` (summed KL times T^2, divided by the batch size)."""
    log_ps = F.log_softmax(s_logits / temperature, dim=1)
    pt = F.softmax(t_logits / temperature, dim=1)
    return F.kl_div(log_ps, pt, reduction="sum") * temperature**2 / s_logits.shape[0]


def dkd(s_logits: Tensor, t_logits: Tensor, target: Tensor, temperature: float, alpha: float, beta: float) -> Tensor:
    """Decoupled KD as mdistiller's ``dkd_loss`` computes it (before the warm-up factor)."""
    gt = F.one_hot(target, s_logits.shape[1]).bool()
    ps, pt = F.softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1)

    def binary(p: Tensor) -> Tensor:
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)

    b = s_logits.shape[0]
    tckd = F.kl_div(torch.log(binary(ps)), binary(pt), reduction="sum") * temperature**2 / b
    big = 1000.0 * gt
    nckd = F.kl_div(F.log_softmax(s_logits / temperature - big, 1), F.softmax(t_logits / temperature - big, 1),
                    reduction="sum") * temperature**2 / b
    return alpha * tckd + beta * nckd


def vid(mean: Tensor, var: Tensor, f_t: Tensor) -> Tensor:
    """VID's negative log-likelihood (constant dropped), RepDistiller's ``VIDLoss`` given its variance."""
    v = var.view(1, -1, 1, 1)
    return (0.5 * ((mean - f_t).pow(2) / v + torch.log(v))).mean()


def hcl(f_s: Tensor, f_t: Tensor) -> Tensor:
    """ReviewKD's hierarchical context loss for one level (the authors' ``hcl``)."""
    h = f_s.shape[2]
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
        total += weight
    return loss / total


def hkd_combined(f_t: Tensor, f_s: Tensor, eps: float = 1e-6) -> Tensor:
    """Heterogeneous KD, one layer pair: passalis/pkth ``nn/pkt_transfer.py`` ``prob_loss`` with
    ``kernel_parameters = {'student': 'combined', 'teacher': 'combined', 'loss': 'combined'}`` (their
    exp2_proposed.py), ``teacher_d = student_d = 1``, on flattened features."""

    def pairwise_distances(a: Tensor) -> Tensor:
        aa = torch.sum(a ** 2, dim=1)
        bb = torch.sum(a ** 2, dim=1)
        aa = aa.expand(bb.size(0), aa.size(0)).t()
        bb = bb.expand(aa.size(0), bb.size(0))
        dists = aa + bb - 2 * torch.mm(a, a.transpose(0, 1))
        return torch.sqrt(torch.clamp(dists, min=0) + eps)

    def cosine_pairwise_similarities(features: Tensor) -> Tensor:
        norm = torch.sqrt(torch.sum(features ** 2, dim=1, keepdim=True))
        features = features / (norm + eps)
        features = torch.where(features != features, torch.zeros_like(features), features)
        return (torch.mm(features, features.transpose(0, 1)) + 1.0) / 2.0

    t, s = f_t.reshape(f_t.shape[0], -1), f_s.reshape(f_s.shape[0], -1)
    t2, s2 = 1.0 / (1 + pairwise_distances(t)), 1.0 / (1 + pairwise_distances(s))
    t1, s1 = cosine_pairwise_similarities(t), cosine_pairwise_similarities(s)
    t1, s1 = t1 / torch.sum(t1, dim=1, keepdim=True), s1 / torch.sum(s1, dim=1, keepdim=True)
    t2, s2 = t2 / torch.sum(t2, dim=1, keepdim=True), s2 / torch.sum(s2, dim=1, keepdim=True)
    loss1 = (t1 - s1) * (torch.log(t1) - torch.log(s1))
    loss2 = (t2 - s2) * (torch.log(t2) - torch.log(s2))
    return torch.mean(loss1) + torch.mean(loss2)


def ard_attack_and_loss(student, teacher, pixels: Tensor, targets: Tensor, epsilon: float, step_size: float,
                        steps: int, temperature: float, alpha: float,
                        start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Adversarially robust distillation: goldblum/AdversariallyRobustDistillation ``main.py``, ``AttackPGD``
    on [0, 1] pixels (a uniform start in the ball, here ``start`` in [-1, 1) times epsilon or none; summed
    cross-entropy on the labels; signed steps; clipped to the ball and to [0, 1]) and the training loss
    ``alpha * T^2 * nn.KLDivLoss()(log_softmax(S(x') / T), softmax(T(x) / T)) + (1 - alpha) * CE(S(x), y)``
    (KLDivLoss's default mean: over batch and classes). ``student``/``teacher`` take pixels. Returns the
    attacked pixels and the loss."""
    x = pixels.detach()
    if start is not None:
        x = x + start * epsilon
    for _ in range(steps):
        x.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(student(x), targets, reduction="sum")
        grad = torch.autograd.grad(loss, [x])[0]
        x = x.detach() + step_size * torch.sign(grad.detach())
        x = torch.min(torch.max(x, pixels - epsilon), pixels + epsilon)
        x = torch.clamp(x, 0.0, 1.0)
    p_t, log_p_s = F.softmax(teacher(pixels) / temperature, dim=1), F.log_softmax(student(x) / temperature, dim=1)
    kl = (p_t * (p_t.log() - log_p_s)).mean()  # nn.KLDivLoss()'s default, 'mean': over batch and classes
    return x, alpha * temperature * temperature * kl + (1.0 - alpha) * F.cross_entropy(student(pixels), targets)


def mhgd_attention(k: Tensor, q: Tensor, w_sender: Tensor, w_receiver: Tensor, bn_sender, bn_receiver, d: int,
                   heads: int) -> Tensor:
    """MHGD's ``Attention_head(K, Q, D, num_head)`` (sseung0703/KD_methods_with_TF ``nets/Relation.py``):
    fully connected layers without bias (the network's arg scope) to ``D * num_head``, batch norm, reshape
    to ``[B, D, num_head]``, transposes ``[2, 0, 1]`` and ``[2, 1, 0]``, matmul -> ``[num_head, B, B]``.
    ``w_*``: ``[out, in]`` weights; ``bn_*``: callables."""
    b = k.shape[0]
    x_sender = bn_sender(k @ w_sender.T).reshape(b, d, heads)
    x_receiver = bn_receiver(q @ w_receiver.T).reshape(b, d, heads)
    return torch.matmul(x_sender.permute(2, 0, 1), x_receiver.permute(2, 1, 0))


def mhgd_estimator(x: Tensor, g: Tensor, w0: Tensor, bn0, w1: Tensor, b1: Tensor, heads: int) -> Tensor:
    """MHGD's ``Estimator`` without ``drop_head`` (evaluation): softmax of G over its last axis, reshape to
    ``[num_head * B, B]``, ``X`` through fc0 (no bias) + batch norm + ReLU, ``G @ X`` reshaped to
    ``[num_head, B, D]``, transposed to ``[B, D * num_head]``, fc1 (with bias), L2-normalised."""
    b = g.shape[1]
    g = torch.softmax(g, -1).reshape(heads * b, b)
    x = torch.relu(bn0(x @ w0.T))
    x = torch.matmul(g, x).reshape(heads, b, -1)
    x = x.permute(1, 0, 2).reshape(b, -1) @ w1.T + b1
    return F.normalize(x, dim=-1)


def mhgd_kld(x: Tensor, y: Tensor) -> Tensor:
    """MHGD's ``kld_loss(X, Y)``: ``reduce_sum(softmax(X) * (log_softmax(X) - log_softmax(Y)))`` over every
    axis (heads, senders, receivers); called with the student's tanh'd graph first."""
    return torch.sum(torch.softmax(x, -1) * (torch.log_softmax(x, -1) - torch.log_softmax(y, -1)))
