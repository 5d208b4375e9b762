"""COCO mAP (kdkit.tasks.coco_map, the detection task's records) against pycocotools' COCOeval on the same
detections, including edge cases; and NMS against a brute-force reference."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from kdkit.tasks import create_task
from kdkit.tasks.boxes import batched_nms, box_iou, nms_greedy
from kdkit.tasks.coco_map import average_precision

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def coco_reference(gts, dets, classes):
    """pycocotools' AP, AP50, AP75 (%) of ``gts`` [(image, class, x, y, w, h)] and ``dets`` [(image, class,
    score, x, y, w, h)]."""
    images = sorted({g[0] for g in gts} | {d[0] for d in dets})
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in images], "categories": [{"id": c} for c in classes],
                  "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                                   "iscrowd": 0} for n, (i, c, x, y, w, h) in enumerate(gts)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not dets:  # loadRes refuses an empty list: COCOeval on no detections
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        else:
            dt = gt.loadRes([{"image_id": i, "category_id": c, "score": s, "bbox": [x, y, w, h]}
                             for i, c, s, x, y, w, h in dets])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [100 * v if v > -1 else math.nan for v in ev.stats[:3]]


def ours(gts, dets, classes):
    d, g = {}, {}
    for i, c, s, x, y, w, h in dets:
        sc, bx = d.get((i, c), (np.zeros(0), np.zeros((0, 4))))
        d[(i, c)] = (np.append(sc, s), np.vstack([bx, [x, y, w, h]]))
    for i, c, x, y, w, h in gts:
        g[(i, c)] = np.vstack([g.get((i, c), np.zeros((0, 4))), [x, y, w, h]])
    r = average_precision(d, g, classes)
    return [r["map"], r["ap50"], r["ap75"]]


def random_case(seed, images=40, classes=(0, 1, 2, 3), ties=False):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(images):
        for _ in range(rng.integers(0, 5)):
            c = int(rng.choice(classes[:-1]))  # the last class never has ground truth
            x, y = rng.uniform(0, 50, 2)
            w, h = rng.uniform(4, 30, 2)
            gts.append((i, c, x, y, w, h))
            for _ in range(rng.integers(0, 4)):  # detections near it, some of the wrong class
                cd = c if rng.random() < 0.8 else int(rng.choice(classes))
                jit = rng.normal(0, 3, 4)
                s = round(rng.random(), 1) if ties else float(rng.random())
                dets.append((i, cd, s, x + jit[0], y + jit[1], max(w + jit[2], 1), max(h + jit[3], 1)))
        for _ in range(rng.integers(0, 3)):  # false positives anywhere
            s = round(rng.random(), 1) if ties else float(rng.random())
            dets.append((i, int(rng.choice(classes)), s, *rng.uniform(0, 50, 2), *rng.uniform(4, 30, 2)))
    return gts, dets


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_map_equals_pycocotools(seed, ties):
    gts, dets = random_case(seed, ties=ties)
    classes = [0, 1, 2, 3]
    assert ours(gts, dets, classes) == pytest.approx(coco_reference(gts, dets, classes), abs=1e-9, nan_ok=True)


def test_map_edge_cases_equal_pycocotools():
    classes = [0, 1, 2]
    gts = [(1, 0, 10, 10, 20, 20), (1, 0, 12, 12, 20, 20), (2, 1, 0, 0, 5, 5), (3, 1, 40, 40, 5, 5)]
    cases = {
        "no detections": [],
        "detections of a class without ground truth": [(1, 2, 0.9, 10, 10, 20, 20)],
        "equal IoU with two boxes, equal scores": [(1, 0, 0.5, 11, 11, 20, 20), (1, 0, 0.5, 11, 11, 20, 20)],
        "a class-0 detection where only class 1 is": [(3, 0, 0.99, 0, 0, 10, 10), (1, 0, 0.3, 10, 10, 20, 20)],
        "more than 100 detections in an image": [(1, 0, (k % 7) / 7, 10 + k % 5, 10, 20, 20) for k in range(130)],
        # the 101st detection by score is the only one on the box: cut by the 100 per image
        "the match is the 101st detection": [(2, 1, 0.5 + k / 1000, 30, 30, 5, 5) for k in range(100)]
                                            + [(2, 1, 0.1, 0, 0, 5, 5)],
        # A's IoU with both boxes is equal: it takes the later one (pycocotools), so B finds none above .6
        "a tie in IoU decides a later match": [(1, 0, 0.9, 11, 11, 20, 20), (1, 0, 0.8, 13, 13, 20, 20)],
        "a class with ground truth but no detection": [(1, 0, 0.8, 10, 10, 20, 20)],
    }
    for name, dets in cases.items():
        assert ours(gts, dets, classes) == pytest.approx(coco_reference(gts, dets, classes), abs=1e-9,
                                                          nan_ok=True), name
    assert math.isnan(ours([], [(1, 0, 0.5, 0, 0, 1, 1)], classes)[0])  # no ground truth at all: no AP


def test_records_give_the_same_map_in_any_row_order_of_images():
    """Gathered ranks deliver images in another order; AP sorts them by key first."""
    task = create_task("detection")
    task.num_classes = 3
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        for _ in range(3):
            x, y, w, h = rng.uniform(0, 40, 4) + 2
            rows.append([i, 1, rng.integers(0, 3), 1, x, y, w, h])
            rows.append([i, 0, rows[-1][2], rng.random(), x + 1, y, w, h])
    rows.append([-1, 2, 20, 5.0, 0, 0, 0, 0])
    rows = torch.tensor(rows, dtype=torch.float64)
    shuffled = torch.cat([rows[1::2], rows[0::2]])  # rank 1's images, then rank 0's: every pair split
    a, b = task.metrics(rows, False), task.metrics(shuffled, False)
    assert a == b and a["map"] > 0 and a["loss"] == 0.25


def brute_force_nms(boxes, scores, iou):
    """Keep, in decreasing score, every box whose IoU with every kept box is at most ``iou``."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i)):
        if all(float(box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= iou for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("torchvision", [True, False])
@pytest.mark.parametrize("n", [5, 300])
def test_nms_equals_brute_force(n, torchvision, monkeypatch):
    import kdkit.tasks.boxes as boxes_module

    if not torchvision:  # our own, as without torchvision
        monkeypatch.setattr(boxes_module, "_torchvision_nms", lambda: None)
    elif boxes_module._torchvision_nms() is None:
        pytest.skip("torchvision does not import here")
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 20], 1)
    scores = torch.rand(n, generator=g)
    assert nms_greedy(boxes, scores, 0.5).tolist() == brute_force_nms(boxes, scores, 0.5)
    classes = torch.randint(0, 3, (n,), generator=g)
    kept = batched_nms(boxes, scores, classes, 0.5)
    want = sorted((i for c in range(3) for i in (torch.nonzero(classes == c)[:, 0][
        brute_force_nms(boxes[classes == c], scores[classes == c], 0.5)]).tolist()), key=lambda i: -float(scores[i]))
    assert kept.tolist() == want
