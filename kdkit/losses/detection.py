"""The losses of a GFL-style one-stage detector, and its label assignment.

- :func:`atss_assign`: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
  Adaptive Training Sample Selection", CVPR 2020. Each point carries a square anchor of side
  ``anchor_scale * stride``; per ground-truth box, the ``topk`` points of each level nearest its centre are
  candidates, and those whose anchor IoU reaches the mean plus the (unbiased) standard deviation of the
  candidates' IoUs, and whose centre lies inside the box, are positives; a point claimed by several boxes
  goes to the one its anchor overlaps most.
- :func:`vlr_region`: LD's valuable localization region, from the same anchors and thresholds.
- :func:`quality_focal_loss` and :func:`distribution_focal_loss`: Li et al., "Generalized Focal Loss:
  Learning Qualified and Distributed Bounding Boxes for Dense Object Detection", NeurIPS 2020. QFL trains
  the class scores (sigmoid) towards the IoU of the predicted box at the true class and towards 0
  elsewhere, scaled by ``|target - sigmoid|^beta``; DFL trains each side's distribution over the bins
  ``0..reg_max`` (in strides) to put its mass on the two bins around the true distance.
- :func:`giou_loss` from :func:`kdkit.tasks.boxes.giou`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _box_iou_batched(a: Tensor, b: Tensor) -> Tensor:
    """``[B, A, M]`` IoU of boxes ``a`` ``[A, 4]`` (shared) with each image's boxes ``b`` ``[B, M, 4]``."""
    lt = torch.maximum(a[None, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[None, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    return inter / (area_a[None, :, None] + area_b[:, None, :] - inter).clamp_min(1e-12)


def _atss_threshold(pts: Tensor, strides: Tensor, level_counts: list[int], gt: Tensor, topk: int,
                    anchor_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The points' anchors ``[A, 4]``, their IoUs with the boxes ``[B, A, M]``, the ATSS candidates ``[B, A, M]``
    and each box's IoU threshold, the candidates' mean plus (unbiased) std ``[B, 1, M]``."""
    half = strides[:, None] * anchor_scale / 2
    anchors = torch.cat([pts - half, pts + half], 1)
    ious = _box_iou_batched(anchors, gt)  # [B, A, M]
    centres = (gt[..., :2] + gt[..., 2:]) / 2
    dist = (pts[None, :, None, :] - centres[:, None, :, :]).square().sum(-1)  # [B, A, M]
    cand = torch.zeros_like(ious, dtype=torch.bool)
    start = 0
    for n in level_counts:
        k = min(topk, n)
        nearest = dist[:, start:start + n].topk(k, dim=1, largest=False).indices + start  # [B, k, M]
        cand.scatter_(1, nearest, True)
        start += n
    mean = torch.where(cand, ious, torch.nan).nanmean(1, keepdim=True)
    count = cand.sum(1, keepdim=True).clamp_min(2)
    std = ((torch.where(cand, ious - mean, 0.0).square().sum(1, keepdim=True)) / (count - 1)).sqrt()
    return anchors, ious, cand, mean + std


def atss_assign(pts: Tensor, strides: Tensor, level_counts: list[int], gt: Tensor, valid: Tensor,
                topk: int = 9, anchor_scale: float = 8.0) -> Tensor:
    """For points ``pts`` ``[A, 2]`` with their ``strides`` ``[A]`` (levels of ``level_counts`` points, in
    order) and each image's ground-truth boxes ``gt`` ``[B, M, 4]`` (``valid`` ``[B, M]`` marks real ones):
    ``[B, A]`` the index of the box each point is assigned to, -1 for background."""
    b, m = valid.shape
    if m == 0:
        return torch.full((b, len(pts)), -1, dtype=torch.long, device=pts.device)
    _, ious, cand, thr = _atss_threshold(pts, strides, level_counts, gt, topk, anchor_scale)
    inside = (torch.minimum(pts[None, :, None, :] - gt[:, None, :, :2],
                            gt[:, None, :, 2:] - pts[None, :, None, :]).amin(-1) > 0.01)
    pos = cand & (ious >= thr) & inside & valid[:, None, :]
    score = torch.where(pos, ious, -1.0)
    best, which = score.max(-1)
    return torch.where(best >= 0, which, -1)


def vlr_region(pts: Tensor, strides: Tensor, level_counts: list[int], gt: Tensor, valid: Tensor,
               alpha: float = 0.25, topk: int = 9, anchor_scale: float = 8.0) -> Tensor:
    """LD's valuable localization region (Zheng et al., CVPR 2022; the authors' ``get_vlr_region``): the
    points whose anchor's DIoU with a box lies in ``[alpha * thr, thr)``, ``thr`` that box's ATSS threshold,
    anywhere on any level; ``[B, A]`` the largest IoU of such a point with such a box (0 elsewhere)."""
    b, m = valid.shape
    if m == 0:
        return pts.new_zeros(b, len(pts))
    anchors, ious, _, thr = _atss_threshold(pts, strides, level_counts, gt, topk, anchor_scale)
    a_c = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_c = (gt[..., :2] + gt[..., 2:]) / 2
    rho = (a_c[None, :, None, :] - g_c[:, None, :, :]).square().sum(-1)
    lt = torch.minimum(anchors[None, :, None, :2], gt[:, None, :, :2])
    rb = torch.maximum(anchors[None, :, None, 2:], gt[:, None, :, 2:])
    diou = ious - rho / (rb - lt).square().sum(-1).clamp_min(1e-12)
    region = (diou < thr) & (diou >= alpha * thr) & valid[:, None, :]
    return torch.where(region, ious, -1.0).amax(-1).clamp_min(0)


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Elementwise QFL of class logits ``[..., K]`` against soft targets ``[..., K]`` in [0, 1]."""
    p = logits.sigmoid()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (target - p).abs().pow(beta)


def distribution_focal_loss(bins: Tensor, dist: Tensor) -> Tensor:
    """DFL ``[N]`` of bin logits ``[N, R + 1]`` against continuous targets ``dist`` ``[N]`` in ``[0, R)``."""
    left = dist.floor().long()
    w_right = dist - left.to(dist.dtype)
    logp = F.log_softmax(bins, -1)
    return -(logp.gather(-1, left[:, None])[:, 0] * (1 - w_right) + logp.gather(-1, left[:, None] + 1)[:, 0] * w_right)


def expected_distance(bins: Tensor) -> Tensor:
    """The mean of each side's distribution ``[..., R + 1]`` over the bins ``0..R``: ``[...]``."""
    r = bins.shape[-1] - 1
    return (F.softmax(bins, -1) * torch.arange(r + 1, device=bins.device, dtype=bins.dtype)).sum(-1)
