"""Distillation losses for detectors (the methods in :mod:`kdkit.methods`: ``fgfi``, ``chen_od``, ``fgd``,
``ld``, ``det_kd``). Boxes are ``[B, M, 4]`` corners in input pixels with a mask of real rows ``[B, M]``.

- :func:`imitation_mask` (Wang et al., "Distilling Object Detectors with Fine-grained Feature Imitation",
  CVPR 2019): per box, the points whose anchor overlaps it by more than ``psi`` times the best overlap of
  any point's anchor with it; the union over the boxes.
- :func:`bounded_regression` (Chen et al., "Learning Efficient Object Detection Models with Knowledge
  Distillation", NeurIPS 2017): the student's squared regression error, counted only where it is not
  already ``margin`` better than the teacher's.
- :func:`fgd_masks`, :func:`fgd_attention`, :func:`fgd_focal`, :func:`fgd_attention_loss` and
  :class:`GlobalContext` (Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022;
  the formulas of MMRazor's ``fgd_loss.py``).
- :func:`localization_distillation` (Zheng et al., "Localization Distillation for Dense Object Detection",
  CVPR 2022; MMDetection's ``KnowledgeDistillationKLDivLoss`` with LD's weights).
- :func:`sigmoid_kd`: Hinton's soft targets for per-class sigmoid scores, one Bernoulli per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def imitation_mask(anchors: Tensor, boxes: Tensor, valid: Tensor, psi: float = 0.5) -> Tensor:
    """``[B, A]`` bool: the points whose anchor (``anchors`` ``[A, 4]``) has IoU above ``psi`` times the
    largest IoU of any anchor with some box of its image (FGFI's imitation region)."""
    lt = torch.maximum(anchors[None, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(anchors[None, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (anchors[:, 2:] - anchors[:, :2]).prod(-1)
    area_b = (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)
    iou = inter / (area_a[None, :, None] + area_b[:, None, :] - inter).clamp_min(1e-12)  # [B, A, M]
    best = iou.amax(1, keepdim=True)
    return ((iou > psi * best) & (best > 0) & valid[:, None, :]).any(-1)


def bounded_regression(student: Tensor, teacher: Tensor, target: Tensor, margin: float = 0.0) -> Tensor:
    """``[N]`` Chen et al.'s teacher-bounded L2 loss: ``||s - y||^2`` where ``||s - y||^2 + margin > ||t - y||^2``,
    else 0 (``student``, ``teacher``, ``target``: ``[N, D]`` regression outputs and targets)."""
    err_s = (student - target).square().sum(-1)
    err_t = (teacher - target).square().sum(-1).detach()
    return torch.where(err_s + margin > err_t, err_s, torch.zeros_like(err_s))


def fgd_masks(boxes: Tensor, valid: Tensor, image_size: tuple[int, int],
              size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """FGD's foreground mask ``[B, H, W]`` (each box's cells, found as MMRazor finds them, weighted by one over
    its cell count, the largest where boxes overlap) and background mask (the other cells, summing to 1)."""
    (ih, iw), (h, w) = image_size, size
    fg = boxes.new_zeros(len(boxes), h, w)
    for i in range(len(boxes)):
        for x1, y1, x2, y2 in boxes[i][valid[i]].tolist():
            c0, c1 = math.floor(x1 / iw * w), math.ceil(x2 / iw * w)
            r0, r1 = math.floor(y1 / ih * h), math.ceil(y2 / ih * h)
            weight = 1.0 / ((r1 + 1 - r0) * (c1 + 1 - c0))
            fg[i, r0:r1 + 1, c0:c1 + 1] = fg[i, r0:r1 + 1, c0:c1 + 1].clamp_min(weight)
    bg = (fg == 0).to(fg.dtype)
    bg = bg / bg.sum((1, 2), keepdim=True).clamp_min(1)
    return fg, bg


def fgd_attention(feat: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Spatial ``[B, H, W]`` (summing to H*W) and channel ``[B, C]`` (summing to C) attention of a map."""
    b, c, h, w = feat.shape
    a = feat.abs()
    spatial = h * w * F.softmax((a.mean(1) / temp).reshape(b, -1), 1).reshape(b, h, w)
    channel = c * F.softmax(a.mean((2, 3)) / temp, 1)
    return spatial, channel


def fgd_focal(s: Tensor, t: Tensor, fg: Tensor, bg: Tensor, spatial_t: Tensor,
              channel_t: Tensor) -> tuple[Tensor, Tensor]:
    """FGD's focal feature loss, foreground and background parts: squared differences weighted by the
    teacher's spatial and channel attention and the mask, summed, over the batch size."""
    weight = spatial_t[:, None] * channel_t[:, :, None, None]
    sq = (s - t).square() * weight
    return (sq * fg[:, None]).sum() / len(s), (sq * bg[:, None]).sum() / len(s)


def fgd_attention_loss(spatial_s: Tensor, channel_s: Tensor, spatial_t: Tensor, channel_t: Tensor) -> Tensor:
    """FGD's attention loss: L1 between the student's and the teacher's attention, over the batch size."""
    return ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / len(spatial_s)


class GlobalContext(nn.Module):
    """FGD's global relation: a GcBlock (Cao et al., GCNet 2019) per network, ``x + transform(context(x))``
    with the context a softmax-weighted sum over positions; the loss is the summed squared difference of
    the two blocks' outputs over the batch size."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(channels // 2, 1)

        def transform() -> nn.Sequential:
            seq = nn.Sequential(nn.Conv2d(channels, half, 1), nn.LayerNorm([half, 1, 1]), nn.ReLU(inplace=True),
                                nn.Conv2d(half, channels, 1))
            nn.init.zeros_(seq[-1].weight)  # the block starts as the identity (GCNet's last-zero init)
            nn.init.zeros_(seq[-1].bias)
            return seq
        self.mask_s, self.mask_t = nn.Conv2d(channels, 1, 1), nn.Conv2d(channels, 1, 1)
        for m in (self.mask_s, self.mask_t):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        self.add_s, self.add_t = transform(), transform()

    @staticmethod
    def _block(x: Tensor, mask: nn.Module, add: nn.Module) -> Tensor:
        b, c = x.shape[:2]
        weights = F.softmax(mask(x).reshape(b, 1, -1), 2)  # [B, 1, HW]
        context = torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2)).reshape(b, c, 1, 1)
        return x + add(context)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        out_s, out_t = self._block(s, self.mask_s, self.add_s), self._block(t, self.mask_t, self.add_t)
        return (out_s - out_t).square().sum() / len(s)


def localization_distillation(s_bins: Tensor, t_bins: Tensor, weight: Tensor, temperature: float = 10.0) -> Tensor:
    """LD: for each side ``[N, R + 1]`` of bin logits, ``T^2`` times the mean over the bins of
    ``KL(softmax(t / T) || softmax(s / T))``'s terms, weighted by ``weight`` ``[N]`` and summed, over 4 (the
    sides of a box): MMDetection's LD head with its KL loss."""
    p_t = F.softmax(t_bins.detach() / temperature, -1)
    kl = F.kl_div(F.log_softmax(s_bins / temperature, -1), p_t, reduction="none").mean(-1) * temperature ** 2
    return (kl * weight).sum() / 4.0


def sigmoid_kd(s_logits: Tensor, t_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Elementwise ``T^2`` binary cross-entropy of the student's tempered sigmoid against the teacher's."""
    target = torch.sigmoid(t_logits.detach() / temperature)
    return F.binary_cross_entropy_with_logits(s_logits / temperature, target, reduction="none") * temperature ** 2
