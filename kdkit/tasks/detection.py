"""Object detection with a one-stage, anchor-free, GFL-style detector.

**Targets**: ``float32 [B, M, 5]`` per image, rows ``(class, x1, y1, x2, y2)`` in pixels of the network's
input; rows whose class is -1 are padding (an image has at most ``M`` boxes, any fewer).

**Output contract**: one tensor ``[B, A, K + 4 (R + 1)]`` over the ``A`` points of every level (level by
level, each row-major): ``K`` class logits (sigmoid, no background class), then the distances to the box's
left, top, right and bottom sides, each as logits over the bins ``0..R`` in units of the level's stride
(GFL's general distribution). The network states its ``strides`` (one per level, e.g. ``(8, 16, 32)``;
a level of stride ``s`` has ``ceil(H / s) x ceil(W / s)`` points) and ``reg_max`` (``R``); all networks of a
run share them, so that outputs can be averaged, compared and distilled point by point.

**Loss** (GFL, Li et al. 2020): ATSS assignment, quality focal loss on the classes (normalised by the
positives), GIoU loss weighted 2 and distribution focal loss weighted 1/4 on the positives' boxes (each
point weighted by its highest class score, normalised by the weights' sum).

**Evaluation**: boxes decoded from the distributions' means, scores above 0.05, the 1000 best before a
class-wise NMS at IoU 0.6, at most 100 per image (GFL's test settings); COCO mAP@[.5:.95] (primary),
AP50, AP75 and per-class AP computed as pycocotools does (:mod:`kdkit.tasks.coco_map`). Detections are
records, not summable counts: every rank's are gathered before AP is computed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.detection import atss_assign, distribution_focal_loss, expected_distance, quality_focal_loss
from .base import Task, register_task
from .boxes import batched_nms, box_to_distance, distance_to_box, giou, points
from .coco_map import average_precision

SCORE_THR, NMS_PRE, NMS_IOU, MAX_PER_IMAGE = 0.05, 1000, 0.6, 100
KIND_DET, KIND_GT, KIND_LOSS = 0, 1, 2


@dataclass(frozen=True)
class Layout:
    """Where a detector's points are: its levels' strides, its bins, and the input size they cover."""

    strides: tuple[int, ...]
    reg_max: int
    image_size: tuple[int, int]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        h, w = self.image_size
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    @property
    def level_counts(self) -> list[int]:
        """Points per level."""
        return [h * w for h, w in self.sizes]

    @property
    def num_points(self) -> int:
        return sum(self.level_counts)

    def grid(self, device) -> tuple[Tensor, Tensor]:
        """Point centres ``[A, 2]`` and their strides ``[A]`` (made once per layout and device: every step's
        loss, the methods and the decoding read them; never written to)."""
        return _grid(self, torch.device(device))


@functools.lru_cache(maxsize=16)
def _grid(lay: Layout, device: torch.device) -> tuple[Tensor, Tensor]:
    pts = points(lay.sizes, lay.strides, device)
    strides = torch.cat([torch.full((h * w,), float(s), device=device) for (h, w), s in zip(lay.sizes, lay.strides)])
    return pts, strides


def split_output(output: Tensor, num_classes: int, reg_max: int) -> tuple[Tensor, Tensor]:
    """Class logits ``[B, A, K]`` and box bins ``[B, A, 4, R + 1]`` of a detector's output."""
    return output[..., :num_classes], output[..., num_classes:].unflatten(-1, (4, reg_max + 1))


def targets_valid(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Classes ``[B, M]`` (long), boxes ``[B, M, 4]`` and the mask of real rows ``[B, M]`` of detection targets."""
    return target[..., 0].long(), target[..., 1:5].float(), target[..., 0] >= 0


@register_task
class Detection(Task):
    name = "detection"
    primary = "map"
    gathered = True  # evaluation gives records (detections and ground truth), concatenated over batches and ranks

    num_classes: int | None = None
    layout: Layout | None = None

    # -- binding to the networks and the data --------------------------------------------------------------
    def bind(self, network, inputs: Any) -> None:
        """Take the point layout from a network that states ``strides`` and ``reg_max`` and an input batch
        (its last two dimensions); a network that states neither (an ensemble wrapper) keeps the layout."""
        strides, reg_max = getattr(network, "strides", None), getattr(network, "reg_max", None)
        if strides is None and reg_max is None:
            if self.layout is None:
                raise ConfigError(f"{type(network).__name__} does not state its detection layout: a detector has the "
                                  "attributes strides (one per level, e.g. (8, 16, 32)) and reg_max (its bins per side "
                                  "minus one; see docs/detection.md)")
            return
        good = (isinstance(strides, (tuple, list)) and strides and all(isinstance(s, int) and s > 0 for s in strides)
                and isinstance(reg_max, int) and reg_max >= 1)
        if not good:
            raise ConfigError(f"{type(network).__name__}: strides must be positive integers and reg_max an integer "
                              f">= 1, got strides={strides!r}, reg_max={reg_max!r}")
        shape = inputs.shape if isinstance(inputs, Tensor) else None
        if shape is None or len(shape) < 3:
            raise ConfigError("detection needs image inputs [batch, channels, height, width]")
        layout = Layout(tuple(strides), reg_max, (int(shape[-2]), int(shape[-1])))
        if self.layout is not None and (layout.strides, layout.reg_max) != (self.layout.strides, self.layout.reg_max):
            raise ConfigError(f"the detectors of a run must share strides and reg_max: {type(network).__name__} has "
                              f"{layout.strides} / {layout.reg_max}, another "
                              f"{self.layout.strides} / {self.layout.reg_max}")
        self.layout = layout

    def _layout(self, output: Tensor) -> Layout:
        if self.layout is None:
            raise ConfigError("the detection task has no layout yet (it is taken from the network: Task.bind)")
        if self.num_classes is None:
            self.num_classes = output.shape[-1] - 4 * (self.layout.reg_max + 1)
        return self.layout

    # -- training -----------------------------------------------------------------------------------------
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return sum(self.loss_terms(output, target).values())

    def positives(self, target: Tensor, device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The ATSS positives of a batch (what the loss trains, and the detection methods distil at): image
        and point indices ``[P]``, each one's class ``[P]``, ground-truth box ``[P, 4]`` and distances to the
        box's sides in strides, clamped below ``reg_max`` ``[P, 4]``."""
        lay = self.layout
        labels, boxes, valid = targets_valid(target)
        pts, strides = lay.grid(device)
        with torch.no_grad():
            assigned = atss_assign(pts, strides, lay.level_counts, boxes, valid)  # [B, A]
        b_idx, a_idx = (assigned >= 0).nonzero(as_tuple=True)
        g_idx = assigned[b_idx, a_idx]
        gt_box = boxes[b_idx, g_idx]
        dist = (box_to_distance(pts[a_idx], gt_box) / strides[a_idx, None]).clamp(0, lay.reg_max - 0.01)
        return b_idx, a_idx, labels[b_idx, g_idx], gt_box, dist

    def loss_terms(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """GFL's three terms, weighted: ``qfl``, ``giou`` (x2), ``dfl`` (x1/4)."""
        lay = self._layout(output)
        k, r = self.num_classes, lay.reg_max
        cls, bins = split_output(output.float(), k, r)
        b_idx, a_idx, pos_labels, gt_box, dist = self.positives(target, output.device)
        soft = torch.zeros_like(cls)
        n_pos = max(len(b_idx), 1)
        if len(b_idx) == 0:
            zero = bins.sum() * 0.0
            return {"qfl": quality_focal_loss(cls, soft).sum() / n_pos, "giou": zero, "dfl": zero}
        pts, strides = lay.grid(output.device)
        pred_box = distance_to_box(pts[a_idx], expected_distance(bins[b_idx, a_idx]) * strides[a_idx, None])
        g = giou(pred_box, gt_box)
        with torch.no_grad():
            iou = _iou_pairs(pred_box, gt_box)
            soft[b_idx, a_idx, pos_labels] = iou
            weight = cls[b_idx, a_idx].sigmoid().max(-1).values
        w_sum = weight.sum().clamp_min(1e-6)
        dfl = distribution_focal_loss(bins[b_idx, a_idx].reshape(-1, r + 1), dist.reshape(-1)).view(-1, 4).mean(1)
        return {"qfl": quality_focal_loss(cls, soft).sum() / n_pos, "giou": 2.0 * ((1 - g) * weight).sum() / w_sum,
                "dfl": 0.25 * (dfl * weight).sum() / w_sum}

    # -- evaluation ---------------------------------------------------------------------------------------
    def decode(self, output: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: ``(boxes [n, 4] xyxy, scores [n], classes [n])`` after thresholding and NMS."""
        lay = self._layout(output)
        cls, bins = split_output(output.float(), self.num_classes, lay.reg_max)
        pts, strides = lay.grid(output.device)
        boxes = distance_to_box(pts, expected_distance(bins) * strides[:, None])  # [B, A, 4]
        h, w = lay.image_size
        limit = torch.tensor([w, h, w, h], device=output.device, dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp_min(0), limit)
        scores = cls.sigmoid()
        out = []
        for i in range(len(output)):
            s = scores[i].flatten()
            keep = (s > SCORE_THR).nonzero()[:, 0]
            if len(keep) > NMS_PRE:
                keep = keep[s[keep].topk(NMS_PRE).indices]
            point, label = keep // self.num_classes, keep % self.num_classes
            b, sc = boxes[i, point], s[keep]
            kept = batched_nms(b, sc, label, NMS_IOU)[:MAX_PER_IMAGE]
            out.append((b[kept], sc[kept], label[kept]))
        return out

    def eval_records(self, output: Tensor, target: Tensor, keys: Tensor) -> Tensor:
        """Rows ``(image key, kind, class, score, x, y, w, h)`` float64: the detections (kind 0), the ground
        truth (kind 1) and one row of the batch's summed loss (kind 2: class = images, score = loss sum)."""
        rows = []
        for (boxes, scores, labels), key in zip(self.decode(output), keys.tolist()):
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).double()
            rows.append(torch.cat([torch.full((len(boxes), 2), float(key), dtype=torch.float64, device=boxes.device),
                                   labels[:, None].double(), scores[:, None].double(), xywh], 1))
            rows[-1][:, 1] = KIND_DET
        labels, boxes, valid = targets_valid(target)
        img = keys.to(boxes.device)[:, None].expand_as(labels)[valid].double()
        gt = boxes[valid].double()
        rows.append(torch.stack([img, torch.full_like(img, KIND_GT), labels[valid].double(), torch.ones_like(img),
                                 gt[:, 0], gt[:, 1], gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]], 1))
        loss = self.loss(output, target).detach().double() * len(output)
        head = loss.new_tensor([-1.0, KIND_LOSS, len(output)])
        rows.append(torch.cat([head, loss[None], loss.new_zeros(4)])[None])
        return torch.cat(rows)

    def empty_records(self) -> Tensor:
        return torch.zeros(0, 8, dtype=torch.float64)

    def metrics(self, records: Tensor, with_teacher: bool) -> dict[str, float]:
        r = records.cpu().numpy()
        kind = r[:, 1]
        lossrows = r[kind == KIND_LOSS]
        images = lossrows[:, 2].sum()
        dets, gts = _group(r[kind == KIND_DET], True), _group(r[kind == KIND_GT], False)
        out = average_precision(dets, gts, list(range(self.num_classes or 0)))
        out["loss"] = float(lossrows[:, 3].sum() / images) if images else math.nan
        return out

    # -- checks and records -------------------------------------------------------------------------------
    def record(self, dataset) -> dict[str, Any]:
        self.num_classes = dataset.num_classes
        return super().record(dataset)

    def network_record(self, network) -> dict[str, Any]:
        strides, reg_max = getattr(network, "strides", None), getattr(network, "reg_max", None)
        return {"strides": list(strides), "reg_max": reg_max} if strides is not None else {}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        self.num_classes = dataset.num_classes
        lay = self.layout
        want = None if lay is None else (lay.num_points, dataset.num_classes + 4 * (lay.reg_max + 1))
        if lay is None or shape != want:
            got = "no tensor" if shape is None else f"outputs of shape {list(shape)} per image"
            need = ("" if lay is None else f" [batch, {want[0]}, {want[1]}]: {lay.num_points} points of strides "
                    f"{list(lay.strides)} on {lay.image_size[0]}x{lay.image_size[1]} inputs, each "
                    f"{dataset.num_classes} class logits and 4 x {lay.reg_max + 1} box bins")
            raise ConfigError(f"{network} gives {got}, but detection on {dataset.name} needs the detector "
                              f"contract{need} (docs/detection.md)")

    def check_cache(self, dataset, samples: int) -> None:
        raise ConfigError("train.teacher_cache: detection outputs are dense per point and the training inputs move "
                          "with augmentation; run the teacher live (remove train.teacher_cache)")


def _iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter
    return (inter / union.clamp_min(1e-6)).clamp(0, 1)


def _group(rows: np.ndarray, scored: bool) -> dict:
    """``{(image, class): (scores, boxes)}`` (detections) or ``{(image, class): boxes}`` (ground truth), each
    group in the rows' order; images sorted by key (so that ranks' gathered rows give one process's result)."""
    out: dict = {}
    if not len(rows):
        return out
    rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]  # stable: each group keeps its rows' order
    keys = rows[:, 0].astype(np.int64) * 1_000_003 + rows[:, 2].astype(np.int64)
    _, start = np.unique(keys, return_index=True)
    for lo, hi in zip(start, [*start[1:], len(rows)]):
        part = rows[lo:hi]
        key = (int(part[0, 0]), int(part[0, 2]))
        out[key] = (part[:, 3], part[:, 4:8]) if scored else part[:, 4:8]
    return out
