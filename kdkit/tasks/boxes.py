"""Box geometry for detection: boxes are ``[..., 4]`` corners ``(x1, y1, x2, y2)`` in pixels, x to the right
and y down, with ``x2 - x1`` the width (COCO's convention: a box is ``[x, y, w, h]`` with no +1).

Non-maximum suppression uses ``torchvision.ops.batched_nms`` when torchvision imports beside torch, and
:func:`nms_greedy` (ours, checked against a brute-force reference in the tests) otherwise; both keep the
same boxes, up to the order of boxes whose scores tie exactly.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` ``[N, 4]`` with every box of ``b`` ``[M, 4]``: ``[N, M]``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union.clamp_min(1e-12)


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of matching boxes ``a``, ``b`` ``[..., 4]`` (Rezatofighi et al., "Generalized
    Intersection over Union", CVPR 2019): IoU minus the share of the enclosing box that the union leaves."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area(a) + area(b) - inter
    iou = inter / union.clamp_min(1e-7)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    return iou - (hull - union) / hull.clamp_min(1e-7)


def points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
    """The centres ``[A, 2]`` (x, y) of every cell of every level, level by level and row-major within one:
    cell ``(i, j)`` of a level of stride ``s`` is centred at ``((j + .5) s, (i + .5) s)``."""
    out = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        out.append(torch.stack([xs.flatten(), ys.flatten()], 1).float().add_(0.5).mul_(s))
    return torch.cat(out)


def distance_to_box(p: Tensor, d: Tensor) -> Tensor:
    """Boxes from points ``p`` ``[..., 2]`` and their distances ``d`` ``[..., 4]`` (left, top, right, bottom)."""
    return torch.cat([p - d[..., :2], p + d[..., 2:]], -1)


def box_to_distance(p: Tensor, b: Tensor) -> Tensor:
    """The distances (left, top, right, bottom) ``[..., 4]`` from points ``p`` to the sides of boxes ``b``."""
    return torch.cat([p - b[..., :2], b[..., 2:] - p], -1)


def nms_greedy(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score (ties: the earlier box first). A box is
    dropped when its IoU with a kept box of higher score exceeds ``iou``."""
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order], boxes[order]) > iou
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= ~overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


@functools.cache
def _torchvision_nms():
    try:
        from torchvision.ops import batched_nms
    except Exception:  # not installed, or a build that does not load beside this torch
        return None
    return batched_nms


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou: float) -> Tensor:
    """NMS within each class: indices of the kept boxes, by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    tv = _torchvision_nms()
    if tv is not None:
        return tv(boxes.float(), scores.float(), classes, iou)
    # boxes of different classes never overlap once each class is moved to its own region
    shift = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms_greedy(boxes + shift, scores, iou)
