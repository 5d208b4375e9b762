"""The inference of Hinton et al.'s specialists (2015, sec. 5): for each image, the full distribution that
agrees best with the generalist and with its active specialists, and which specialists are active. Pure
tensor functions: :mod:`kdkit.specialists` trains the specialists and calls these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COMBINE_TOL = 1e-9  # the solution: every image's gradient (max |d objective / d z_k|) at most this
COMBINE_CHUNK = 1024  # images solved at once (independent problems, batched)


def combine(p_g: Tensor, specialists: list[tuple[list[int], Tensor]], active: Tensor, tol: float = COMBINE_TOL,
            max_iter: int = 200) -> Tensor:
    """The paper's combination: ``q = softmax(z)`` ``[B, K]`` minimising, per image,
    ``KL(p_g || q) + sum_{m active} KL(p_m || q_m)``, with ``q_m = (q[S_m], 1 - sum q[S_m])``.

    ``p_g`` ``[B, K]``: the generalist's probabilities; ``specialists``: ``(S_m, p_m [B, |S_m| + 1])``;
    ``active`` ``[B, M]`` bool. Each image is its own problem, solved in float64 by damped Newton steps
    (Levenberg-Marquardt: a step is taken only when it lowers that image's objective) from ``z = log p_g``,
    batched over ``COMBINE_CHUNK`` images, until every image's gradient is below ``tol``
    (:func:`combination_residual`). Rows without an active specialist are ``p_g``."""
    q = p_g.double().clone()
    rows = active.any(1).nonzero().flatten()
    for start in range(0, len(rows), COMBINE_CHUNK):
        idx = rows[start:start + COMBINE_CHUNK]
        q[idx] = _solve(p_g[idx].double(), [(c, p[idx].double()) for c, p in specialists], active[idx], tol,
                        max_iter)
    return q.float()


def _weights(p_g: Tensor, specialists: list[tuple[list[int], Tensor]], active: Tensor
             ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The objective as ``-sum_k w_k log q_k - sum_m c_m log(sum_{k in O_m} q_k)``: ``w`` ``[B, K]`` and, per
    specialist, its dustbin classes ``O_m`` as a mask ``[K]`` with its weight ``c_m`` ``[B]``."""
    w, dustbins = p_g.clone(), []
    for m, (cluster, p_m) in enumerate(specialists):
        on = active[:, m].to(p_g.dtype)
        w[:, cluster] += on[:, None] * p_m[:, :-1]
        outside = torch.ones(p_g.shape[1], dtype=torch.bool)
        outside[cluster] = False
        dustbins.append((outside, on * p_m[:, -1]))
    return w, dustbins


def _value_grad_hessian(z: Tensor, w: Tensor, dustbins: list[tuple[Tensor, Tensor]], hessian: bool = True
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
    log_q = F.log_softmax(z, dim=1)
    q = log_q.exp()
    total = w.sum(1) + sum(c for _, c in dustbins)
    f = -(w * log_q).sum(1)
    g = total[:, None] * q - w
    h = total[:, None, None] * (torch.diag_embed(q) - q[:, :, None] * q[:, None, :]) if hessian else None
    for outside, c in dustbins:
        log_r = log_q.masked_fill(~outside, float("-inf"))
        log_mass = torch.logsumexp(log_r, 1)
        r = (log_r - log_mass[:, None]).exp()
        f = f - c * log_mass
        g = g - c[:, None] * r
        if hessian:
            h = h - c[:, None, None] * (torch.diag_embed(r) - r[:, :, None] * r[:, None, :])
    return f, g, h


def _solve(p_g: Tensor, specialists: list[tuple[list[int], Tensor]], active: Tensor, tol: float,
           max_iter: int) -> Tensor:
    w, dustbins = _weights(p_g, specialists, active)
    z = p_g.clamp_min(1e-12).log()
    damping = torch.full((len(z),), 1e-3, dtype=z.dtype)
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    for _ in range(max_iter):
        f, g, h = _value_grad_hessian(z, w, dustbins)
        todo = g.abs().amax(1) > tol
        if not todo.any():
            break
        step = torch.linalg.solve(h + damping[:, None, None] * eye, -g[:, :, None])[:, :, 0]
        trial = z + step
        f_new, _, _ = _value_grad_hessian(trial, w, dustbins, hessian=False)
        better = (f_new <= f) & todo
        z = torch.where(better[:, None], trial, z)
        damping = torch.where(better, (damping / 3).clamp_min(1e-12), damping * 4)
    return F.softmax(z, dim=1)


def combination_residual(q: Tensor, p_g: Tensor, specialists: list[tuple[list[int], Tensor]],
                         active: Tensor) -> float:
    """The largest gradient entry of the combination objective at ``q`` over the images with an active
    specialist (0 at the exact solution; :func:`combine` stops below ``COMBINE_TOL``)."""
    rows = active.any(1)
    if not rows.any():
        return 0.0
    w, dustbins = _weights(p_g[rows].double(), [(c, p[rows].double()) for c, p in specialists], active[rows])
    _, g, _ = _value_grad_hessian(q[rows].double().clamp_min(1e-300).log(), w, dustbins, hessian=False)
    return float(g.abs().max())


def active_specialists(p_g: Tensor, clusters: list[list[int]], top_k: int) -> Tensor:
    """``[B, M]``: specialist ``m`` is active for an image when its cluster holds one of the generalist's
    ``top_k`` most probable classes."""
    top = p_g.topk(min(top_k, p_g.shape[1]), dim=1).indices
    return torch.stack([torch.isin(top, torch.tensor(c, device=top.device)).any(1) for c in clusters], 1)
