"""Feature-based losses on intermediate activations."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015): mean squared error between the regressed student
    feature and the teacher's hint, both ``[B, C, H, W]`` (or ``[B, D]``); teacher detached.

    The paper writes ``1/2 ||u_h - r(v_g)||^2``; we average over elements (as the authors' and the
    benchmark code do), so the weight is independent of the feature size.
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
    hs, ht = f_s.shape[-2:], f_t.shape[-2:]
    if hs != ht:
        size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
        f_s, f_t = F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)
    return (attention_map(f_s, p) - attention_map(f_t.detach(), p)).pow(2).mean()
