"""COCO-style average precision, computed as pycocotools' ``COCOeval`` computes it for boxes (area range
"all", no crowd annotations), so that the numbers can be compared with any COCO-evaluated paper:

- per image and class, detections are sorted by decreasing score (stable) and the first ``max_dets`` kept;
- at each IoU threshold .50:.05:.95, each detection in turn is matched to the ground-truth box of highest
  IoU (at least the threshold) not matched yet; among equal IoUs the later box wins, as in pycocotools;
- per class, the detections of all images (in image order) are sorted by score (stable); precision is made
  monotone from the right and read at the 101 recall points 0:.01:1 (zero past the last recall reached);
- AP averages over the thresholds, recall points and the classes that have ground truth; AP50 and AP75
  take one threshold. A class without ground truth counts nowhere; its detections do not either.

IoU is computed from ``[x, y, w, h]`` in float64, with pycocotools' formula.
Tests: tests/test_detection_map.py compares the numbers with pycocotools' on the same detections.
"""

from __future__ import annotations

import math

import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALLS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``[D, G]`` IoU of boxes ``[x, y, w, h]`` (pycocotools' ``bbIou``, no crowd)."""
    def side(i: int) -> np.ndarray:  # overlap along x (i = 0) or y (i = 1)
        return (np.minimum(d[:, None, i] + d[:, None, i + 2], g[None, :, i] + g[None, :, i + 2])
                - np.maximum(d[:, None, i], g[None, :, i]))
    w, h = side(0), side(1)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def match(ious: np.ndarray) -> np.ndarray:
    """``[T, D]`` whether each detection (rows of ``ious``, in score order) matches a ground-truth box at
    each threshold, greedily as pycocotools does."""
    t_eff = np.minimum(THRESHOLDS, 1 - 1e-10)[:, None]
    n_d, n_g = ious.shape
    taken = np.zeros((len(THRESHOLDS), n_g), bool)
    matched = np.zeros((len(THRESHOLDS), n_d), bool)
    for d in range(n_d):
        cand = np.where(~taken & (ious[d][None, :] >= t_eff), ious[d][None, :], -1.0)
        last = n_g - 1 - np.argmax(cand[:, ::-1], 1)  # the highest IoU, the later box among ties
        hit = cand[np.arange(len(THRESHOLDS)), last] >= 0
        taken[np.flatnonzero(hit), last[hit]] = True
        matched[:, d] = hit
    return matched


def average_precision(dets: dict, gts: dict, classes: list[int], max_dets: int = 100) -> dict[str, float]:
    """``dets``: ``{(image, class): (scores [n], boxes [n, 4] xywh)}``; ``gts``: ``{(image, class): boxes
    [m, 4] xywh}``; ``classes``: every class id the dataset has. Returns ``map``, ``ap50``, ``ap75`` in %
    (NaN when no class has ground truth) and the per-class AP ``ap/<class>``."""
    images = sorted({k[0] for k in dets} | {k[0] for k in gts})
    precision = np.full((len(THRESHOLDS), len(RECALLS), len(classes)), -1.0)
    for k, c in enumerate(classes):
        n_gt = sum(len(gts.get((i, c), ())) for i in images)
        if n_gt == 0:
            continue
        scores, hits = [], []
        for i in images:
            if (i, c) not in dets:
                continue
            s, b = dets[(i, c)]
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            g = gts.get((i, c), np.zeros((0, 4)))
            hits.append(match(iou_xywh(b[order], g)) if len(g) else np.zeros((len(THRESHOLDS), len(order)), bool))
            scores.append(s[order])
        if not scores:
            precision[:, :, k] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        tp = np.concatenate(hits, 1)[:, order]
        tp_sum, fp_sum = np.cumsum(tp, 1).astype(float), np.cumsum(~tp, 1).astype(float)
        for t in range(len(THRESHOLDS)):
            rc = tp_sum[t] / n_gt
            pr = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone from the right
            idx = np.searchsorted(rc, RECALLS, side="left")
            q = np.zeros(len(RECALLS))
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            precision[t, :, k] = q

    def mean(p: np.ndarray) -> float:
        p = p[p > -1]
        return 100.0 * float(p.mean()) if p.size else math.nan

    out = {"map": mean(precision), "ap50": mean(precision[0]), "ap75": mean(precision[5])}
    out.update({f"ap/{c}": mean(precision[:, :, k]) for k, c in enumerate(classes) if (precision[:, :, k] > -1).any()})
    return out
