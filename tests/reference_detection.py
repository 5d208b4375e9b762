"""The detection distillation formulas of the reference code, written out again for agreement tests:
MMRazor's ``FGDLoss`` (``fgd_loss.py``) and MMDetection's LD head with its ``KnowledgeDistillationKLDivLoss``.
Plain re-derivations of those codes' arithmetic (their loops, index conventions and reductions), used by
tests only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fgd(s: Tensor, t: Tensor, boxes: list[Tensor], image_hw: tuple[int, int], temp: float, alpha: float,
        beta: float, gamma: float, lambda_: float, relation) -> Tensor:
    """MMRazor's FGD on one map pair; ``boxes`` per image ``[n, 4]`` in input pixels; ``relation`` a
    :class:`kdkit.losses.detection_kd.GlobalContext` whose parameters play conv_mask_s/t and
    channel_add_conv_s/t."""
    n, c, h, w = s.shape

    def attention(x):
        v = x.abs()
        sp = (h * w * F.softmax((v.mean(1, keepdim=True) / temp).view(n, -1), dim=1)).view(n, h, w)
        ch = c * F.softmax(v.mean(2).mean(2) / temp, dim=1)
        return sp, ch

    sp_t, ch_t = attention(t)
    sp_s, ch_s = attention(s)
    fg = torch.zeros_like(sp_t)
    bg = torch.ones_like(sp_t)
    for i in range(n):
        b = boxes[i]
        x1 = [math.floor(v / image_hw[1] * w) for v in b[:, 0].tolist()]
        x2 = [math.ceil(v / image_hw[1] * w) for v in b[:, 2].tolist()]
        y1 = [math.floor(v / image_hw[0] * h) for v in b[:, 1].tolist()]
        y2 = [math.ceil(v / image_hw[0] * h) for v in b[:, 3].tolist()]
        for j in range(len(b)):
            area = 1.0 / ((y2[j] + 1 - y1[j]) * (x2[j] + 1 - x1[j]))
            region = fg[i][y1[j]:y2[j] + 1, x1[j]:x2[j] + 1]
            fg[i][y1[j]:y2[j] + 1, x1[j]:x2[j] + 1] = torch.clamp(region, min=area)
        bg[i] = torch.where(fg[i] > 0, 0.0, 1.0)
        if bg[i].sum():
            bg[i] /= bg[i].sum()
    st, ct = sp_t.unsqueeze(1).sqrt(), ch_t[:, :, None, None].sqrt()
    ft, fs = t * st * ct, s * st * ct
    loss_fg = ((fs * fg.unsqueeze(1).sqrt() - ft * fg.unsqueeze(1).sqrt()) ** 2).sum() / n
    loss_bg = ((fs * bg.unsqueeze(1).sqrt() - ft * bg.unsqueeze(1).sqrt()) ** 2).sum() / n
    loss_mask = (ch_s - ch_t).abs().sum() / n + (sp_s - sp_t).abs().sum() / n

    def pool_and_add(x, mask_conv, add):
        m = F.softmax(mask_conv(x).view(n, 1, h * w), dim=2).unsqueeze(-1)
        context = torch.matmul(x.view(n, c, h * w).unsqueeze(1), m).view(n, c, 1, 1)
        return x + add(context)

    out_s = pool_and_add(s, relation.mask_s, relation.add_s)
    out_t = pool_and_add(t, relation.mask_t, relation.add_t)
    loss_rela = ((out_s - out_t) ** 2).sum() / n
    return alpha * loss_fg + beta * loss_bg + gamma * loss_mask + lambda_ * loss_rela


def ld(pred_corners: Tensor, soft_corners: Tensor, weight: Tensor, T: float = 10.0, loss_weight: float = 0.25):
    """MMDetection's LD term of one level: KnowledgeDistillationKLDivLoss (``kl_div(...).mean(1) * T^2``)
    with ``weight`` and ``avg_factor=4``, times ``loss_weight``."""
    target = F.softmax(soft_corners / T, dim=1).detach()
    kd = F.kl_div(F.log_softmax(pred_corners / T, dim=1), target, reduction="none").mean(1) * (T * T)
    return loss_weight * (kd * weight).sum() / 4.0


def fgfi(s_adapted: Tensor, t: Tensor, anchors: Tensor, boxes: list[Tensor], psi: float = 0.5,
         weight: float = 0.01) -> Tensor:
    """The FGFI authors' imitation loss (twangnh/Distilling-Object-Detectors: ``anchor_target_layer.py``'s
    mask, ``trainval_net_sup.py``'s loss) on one map: per image and box, the cells with an anchor whose IoU
    with the box exceeds ``psi`` times the box's best anchor IoU; the masked squared difference over twice
    the masked cells. ``anchors``: ``[H*W, 4]``, one per cell (the authors' 9 per cell summed the same
    way); IoU without the authors' +1 pixel convention (kdkit's boxes are continuous)."""
    from kdkit.tasks.boxes import box_iou

    n, _, h, w = t.shape
    masks = []
    for i in range(n):
        mask = torch.zeros(h, w, dtype=torch.int64)
        if len(boxes[i]):
            iou = box_iou(anchors, boxes[i]).view(h, w, -1)
            best = iou.view(h * w, -1).max(0)[0]
            for k in range(len(boxes[i])):
                mask += (iou[:, :, k] > best[k] * psi).long()
        masks.append((mask > 0).float().unsqueeze(0))
    mask = torch.stack(masks)
    return weight * ((t - s_adapted) ** 2 * mask).sum() / (mask.sum() * 2)


def vlr_region(anchors: Tensor, level_counts: list[int], gt: Tensor, alpha: float = 0.25, topk: int = 9) -> Tensor:
    """The LD authors' ``get_vlr_region`` for one image (``gt`` ``[M, 4]``, ``anchors`` ``[A, 4]``): ATSS's
    threshold per box from the ``topk`` anchors per level nearest its centre, the points whose DIoU with a
    box lies in ``[alpha * thr, thr)``, each weighted by its largest IoU with such a box."""
    from kdkit.tasks.boxes import box_iou

    iou = box_iou(anchors, gt)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    gc = (gt[:, :2] + gt[:, 2:]) / 2
    dist = (ac[:, None] - gc[None]).pow(2).sum(-1).sqrt()
    lt = torch.min(anchors[:, None, :2], gt[None, :, :2])
    rb = torch.max(anchors[:, None, 2:], gt[None, :, 2:])
    diou = iou - (ac[:, None] - gc[None]).pow(2).sum(-1) / (rb - lt).pow(2).sum(-1)
    cand, start = [], 0
    for n in level_counts:
        cand.append(dist[start:start + n].topk(min(topk, n), dim=0, largest=False)[1] + start)
        start += n
    cand = torch.cat(cand)
    c_iou = iou[cand, torch.arange(len(gt))]
    thr = c_iou.mean(0) + c_iou.std(0)
    region = (diou < thr[None]) & (diou >= alpha * thr[None])
    best = torch.where(region, iou, torch.full_like(iou, -1e8)).max(1)[0]
    return torch.where(best > -1e8, best, torch.zeros_like(best))
