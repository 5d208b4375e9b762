"""Detection: COCO files, boxes through the loader, canvases with boxes, the GFL loss and assignment, the
decoding, the detectors, and end-to-end runs (resume, two ranks)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit import from_config
from kdkit.config import DataConfig, load_config
from kdkit.data import load_dataset
from kdkit.data.base import ImageSet
from kdkit.data.canvas import visible_boxes
from kdkit.data.loader import BatchLoader
from kdkit.errors import ConfigError, DatasetError
from kdkit.losses.detection import atss_assign, distribution_focal_loss, quality_focal_loss
from kdkit.models import create_model
from kdkit.tasks import create_task
from kdkit.tasks.detection import Layout

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_coco(root: Path, n_train=24, n_test=8, size=40, seed=0, damage=None):
    """A COCO folder (train.json, test.json, grey PNGs): each image holds 1-3 bright squares (category 7)
    or bars (category 3) on black; ``damage(split, data)`` edits a file's dict before it is written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            pic = np.zeros((size, size), np.uint8)
            for _ in range(rng.integers(1, 4)):
                cat = int(rng.choice([3, 7]))
                w, h = (int(rng.integers(8, 14)),) * 2 if cat == 7 else (int(rng.integers(12, 18)), 5)
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                pic[y:y + h, x:x + w] = 220 if cat == 7 else 120
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": 0})
            Image.fromarray(pic).save(root / split / f"{i:03d}.png")
            images.append({"id": 100 + i, "file_name": f"{i:03d}.png", "width": size, "height": size})
        data = {"images": images, "annotations": anns,
                "categories": [{"id": 3, "name": "bar"}, {"id": 7, "name": "square"}]}
        if damage:
            damage(split, data)
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_coco_folder_reads_and_scales_boxes(tmp_path):
    root = write_coco(tmp_path, size=40)
    raw = json.loads((root / "train.json").read_text())
    ds = load_dataset(DataConfig(name="coco_folder", root=str(root), image_size=20))
    assert ds.num_classes == 2 and ds.classes == ["bar", "square"] and ds.in_channels == 1
    assert ds.train.images.shape == (24, 1, 20, 20) and ds.train.labels.shape[-1] == 5
    first = [a for a in raw["annotations"] if a["image_id"] == 100]
    rows = ds.train.labels[0][ds.train.labels[0, :, 0] >= 0]
    want = [[{3: 0, 7: 1}[a["category_id"]], a["bbox"][0] / 2, a["bbox"][1] / 2, (a["bbox"][0] + a["bbox"][2]) / 2,
             (a["bbox"][1] + a["bbox"][3]) / 2] for a in first]
    assert rows.tolist() == want


def _crowd_and_overrun(split, data):
    data["annotations"][0]["iscrowd"] = 1  # left out
    data["annotations"][1]["bbox"][0] -= 0.5 + data["annotations"][1]["bbox"][0]  # x = -0.5: clipped


def test_coco_folder_leaves_out_crowds_and_clips_small_overruns(tmp_path):
    root = write_coco(tmp_path, damage=_crowd_and_overrun)
    ds = load_dataset(DataConfig(name="coco_folder", root=str(root), image_size=40))
    raw = json.loads((root / "train.json").read_text())
    assert int((ds.train.labels[..., 0] >= 0).sum()) == len(raw["annotations"]) - 1
    real = ds.train.labels[..., 0] >= 0
    assert float(ds.train.labels[..., 1][real].min()) == 0.0


def _ann(key, value, which=2):
    def damage(split, data):
        if split == "train":
            data["annotations"][which][key] = value
    return damage


@pytest.mark.parametrize("damage,message", [
    (_ann("bbox", [30, 30, 20, 5]), r"annotation 3: bbox \[30, 30, 20, 5\] lies outside its image"),
    (_ann("bbox", [3, 3, -4, 5]), "annotation 3: bbox .* negative or zero size"),
    (_ann("bbox", [3, 3, "4", 5]), "annotation 3: bbox must be four finite numbers"),
    (_ann("category_id", 99), "annotation 3: category id 99 is not in categories"),
    (_ann("image_id", 5), "annotation 3: image id 5 is not in images"),
    (lambda s, d: d["images"].append(dict(d["images"][0])), "duplicate image id 100"),
    (lambda s, d: d.pop("categories"), "the lists images, annotations and categories"),
    (lambda s, d: d["images"][1].update(file_name="gone.png"), "file gone.png is in none of"),
    (lambda s, d: s == "test" and d["categories"].append({"id": 9}),
     r"categories \[3, 7, 9\] are not the training file's \[3, 7\]"),
])
def test_bad_coco_files_are_refused_naming_the_annotation(tmp_path, damage, message):
    root = write_coco(tmp_path, damage=damage)
    with pytest.raises(DatasetError, match=message):
        load_dataset(DataConfig(name="coco_folder", root=str(root), image_size=40))


def test_a_bad_coco_file_exits_3_with_one_line(tmp_path):
    import subprocess
    import sys

    root = write_coco(tmp_path / "d", damage=_ann("bbox", [3, 3, 0, 5]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: detection\nmodel: gfl_w8\ndata: {{name: coco_folder, root: {root}, image_size: 32}}\n"
                   f"train: {{epochs: 1, out_dir: {tmp_path}}}\n")
    p = subprocess.run([sys.executable, "-m", "kdkit", "train", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 3 and "annotation 3: bbox [3, 3, 0, 5] has a negative or zero size" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


def _tight(mask: torch.Tensor) -> list[float] | None:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if not len(ys):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_boxes_move_with_their_images():
    """Each box, painted into its image, is moved by the loader's zoom, crop and flip as the box is: the
    moved box is the tight box of the moved paint (to a pixel, from the zoom's sampling), or dropped when
    the paint left the image."""
    g = torch.Generator().manual_seed(0)
    b, size = 64, 32
    boxes = torch.full((b, 2, 5), -1.0)
    images = torch.zeros(b, 1, size, size, dtype=torch.uint8)
    for i in range(b):
        x, y = torch.randint(0, size - 8, (2,), generator=g).tolist()
        w, h = torch.randint(3, 9, (2,), generator=g).tolist()
        boxes[i, 0] = torch.tensor([1.0, x, y, x + w, y + h])
        images[i, 0, y:y + h, x:x + w] = 255
    data = ImageSet(boxes, images=images)
    loader = BatchLoader(data, b, mean=(0.0,), std=(1.0,), shuffle=True, crop_padding=6, flip=True, seed=3,
                         scale=(0.75, 1.25))
    x, y, idx = next(iter(loader))
    dropped = 0
    for i in range(b):
        paint = _tight(x[i, 0] > 0.5)
        if y[i, 0, 0] < 0:
            dropped += 1
            assert paint is None or (paint[2] - paint[0]) * (paint[3] - paint[1]) <= 4
            continue
        assert y[i, 0, 0] == 1 and (y[i, 1] == -1).all()
        assert paint is not None and np.allclose(y[i, 0, 1:].tolist(), paint, atol=1.01), (i, y[i, 0], paint)
    assert dropped < b // 4
    unmoved = BatchLoader(data, b, mean=(0.0,), std=(1.0,))
    assert torch.equal(next(iter(unmoved))[1], boxes)  # evaluation: targets as stored


def test_visible_boxes_drop_mostly_covered_items():
    owner = np.full((10, 10), -1)
    owner[0:4, 0:5] = 0  # item 0: 20 of its 100 pixels visible: dropped
    owner[5:9, 2:7] = 1  # item 1: all 20 visible
    rows = visible_boxes(owner, [0, 1], [100, 20], np.array([4, 6]), 3)
    assert rows.tolist() == [[6, 2, 5, 7, 9], [-1] * 5, [-1] * 5]


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Debian's fashion-mnist not installed")
def test_fashion_canvas_boxes_are_the_visible_garments():
    from kdkit.data.canvas import load_canvas_dataset

    boxes = load_dataset(DataConfig(name="fashion_canvas_boxes"))
    masks = load_canvas_dataset(DataConfig(name="fashion_canvas"))
    assert torch.equal(boxes.test.images, masks.test.images) and boxes.num_classes == 10
    for i in range(200):
        for c, *box in boxes.test.labels[i].tolist():
            if c < 0:
                continue
            x1, y1, x2, y2 = map(int, box)
            inside = masks.test.labels[i, y1:y2, x1:x2] == c + 1
            # the class's pixels touch all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def _atss_reference(pts, strides, counts, gt, topk=9, scale=8.0):
    """ATSS for one image, a box at a time, as the paper states it."""
    from kdkit.tasks.boxes import box_iou

    anchors = torch.cat([pts - strides[:, None] * scale / 2, pts + strides[:, None] * scale / 2], 1)
    ious = box_iou(anchors, gt)
    out = torch.full((len(pts),), -1)
    best = torch.full((len(pts),), -1.0)
    for j in range(len(gt)):
        centre = (gt[j, :2] + gt[j, 2:]) / 2
        d = (pts - centre).norm(dim=1)
        cand, start = [], 0
        for n in counts:
            cand += (d[start:start + n].argsort()[:min(topk, n)] + start).tolist()
            start += n
        cand = torch.tensor(cand)
        thr = ious[cand, j].mean() + ious[cand, j].std()
        for a in cand.tolist():
            inside = min(pts[a, 0] - gt[j, 0], pts[a, 1] - gt[j, 1], gt[j, 2] - pts[a, 0], gt[j, 3] - pts[a, 1]) > 0.01
            if ious[a, j] >= thr and inside and ious[a, j] > best[a]:
                best[a], out[a] = ious[a, j], j
    return out


def test_atss_assignment_equals_the_per_box_reference():
    lay = Layout((4, 8, 16), 16, (64, 64))
    pts, strides = lay.grid("cpu")
    counts = [h * w for h, w in lay.sizes]
    g = torch.Generator().manual_seed(0)
    b, m = 64, 4
    xy = torch.rand(b, m, 2, generator=g) * 40
    gt = torch.cat([xy, xy + 8 + torch.rand(b, m, 2, generator=g) * 16], -1)
    valid = torch.rand(b, m, generator=g) < 0.7
    got = atss_assign(pts, strides, counts, gt, valid)
    for i in range(b):
        keep = valid[i].nonzero()[:, 0]
        if not len(keep):
            assert (got[i] == -1).all()
            continue
        ref = _atss_reference(pts, strides, counts, gt[i, keep])
        assert torch.equal(got[i], torch.where(ref >= 0, keep[ref.clamp_min(0)], -1)), i
    assert (got >= 0).sum() > b  # boxes find positives


def test_qfl_and_dfl_are_the_papers_formulas():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(64, 336, 10, generator=g), torch.rand(64, 336, 10, generator=g)
    p = logits.sigmoid()
    want = -(target * p.log() + (1 - target) * (1 - p).log()) * (target - p).abs() ** 2
    torch.testing.assert_close(quality_focal_loss(logits, target), want, rtol=1e-4, atol=1e-6)
    bins, dist = torch.randn(4096, 17, generator=g), torch.rand(4096, generator=g) * 15.99
    lo = dist.floor().long()
    logp = bins.log_softmax(-1)
    want = -((lo + 1 - dist) * logp[torch.arange(4096), lo] + (dist - lo) * logp[torch.arange(4096), lo + 1])
    torch.testing.assert_close(distribution_focal_loss(bins, dist), want)


def _encode(lay, k, boxes_per_image, logit=12.0):
    """A detector output that predicts exactly ``boxes_per_image`` [(class, x1, y1, x2, y2)] at the point
    nearest each box's centre (distances on whole bins)."""
    pts, strides = lay.grid("cpu")
    r = lay.reg_max
    out = torch.full((len(boxes_per_image), len(pts), k + 4 * (r + 1)), -logit)
    for i, boxes in enumerate(boxes_per_image):
        for c, *box in boxes:
            box = torch.tensor(box)
            a = int(((pts - (box[:2] + box[2:]) / 2).norm(dim=1) + (strides != 4) * 1e3).argmin())
            d = torch.cat([pts[a] - box[:2], box[2:] - pts[a]]) / strides[a]
            out[i, a, c] = logit
            for side in range(4):
                out[i, a, k + side * (r + 1) + int(d[side])] = logit
    return out


def test_decoding_recovers_the_boxes_and_scores_full_map():
    task = create_task("detection")
    task.layout, task.num_classes = Layout((4, 8, 16), 16, (64, 64)), 3
    boxes = [[(0, 6, 10, 30, 26), (2, 34, 34, 58, 62)], [(1, 2, 2, 22, 14)]]
    out = _encode(task.layout, 3, boxes)
    dec = task.decode(out)
    assert [sorted(d[2].tolist()) for d in dec] == [[0, 2], [1]]
    for (b, s, c), want in zip(dec, boxes):
        assert (s > 0.99).all()
        for row in want:
            j = c.tolist().index(row[0])
            torch.testing.assert_close(b[j], torch.tensor(row[1:], dtype=torch.float32))
    target = torch.full((2, 2, 5), -1.0)
    for i, bs in enumerate(boxes):
        target[i, :len(bs)] = torch.tensor(bs, dtype=torch.float32)
    m = task.metrics(task.eval_records(out, target, torch.tensor([0, 1])), False)
    assert m["map"] == pytest.approx(100.0) and m["ap50"] == pytest.approx(100.0)


def test_gfl_loss_prefers_the_right_boxes():
    task = create_task("detection")
    task.layout, task.num_classes = Layout((4, 8, 16), 16, (64, 64)), 3
    boxes = [[(0, 6, 10, 30, 26), (2, 34, 34, 58, 62)], [(1, 2, 2, 22, 14)]]
    target = torch.full((2, 2, 5), -1.0)
    for i, bs in enumerate(boxes):
        target[i, :len(bs)] = torch.tensor(bs, dtype=torch.float32)
    good = _encode(task.layout, 3, boxes, logit=4.0)
    wrong = _encode(task.layout, 3, [[(1, 6, 10, 20, 20)], [(0, 30, 30, 50, 60)]], logit=4.0)
    lg, lw = task.loss_terms(good, target), task.loss_terms(wrong, target)
    assert sum(lg.values()) < sum(lw.values()) and all(torch.isfinite(v) for v in lg.values())
    empty = task.loss_terms(good, torch.full((2, 2, 5), -1.0))  # no boxes: only the class term
    assert float(empty["giou"]) == 0.0 and float(empty["qfl"]) > 0


@pytest.mark.parametrize("name,points", [("gfl_w8", 336), ("gfl_resnet8", 5376)])
def test_detectors_give_the_contract(name, points):
    net = create_model(name, num_classes=10, in_channels=1)
    out = net(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, points, 10 + 4 * 17) and net.reg_max == 16
    assert Layout(net.strides, 16, (64, 64)).num_points == points


def _det_cfg(tmp_path, folder, **over):
    base = {"task": "detection", "model": "gfl_w8",
            "data": {"name": "coco_folder", "root": str(folder), "image_size": 32, "batch_size": 8},
            "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "run"}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def test_bad_networks_are_refused_before_training(tmp_path):
    write_coco(tmp_path / "d")
    with pytest.raises(ConfigError, match="does not state its detection layout"):
        from_config(load_config(base=_det_cfg(tmp_path, tmp_path / "d", model="cnn_tiny")), log=lambda m: None)
    assert not (tmp_path / "run").exists()
    ds = load_dataset(DataConfig(name="coco_folder", root=str(tmp_path / "d"), image_size=32))
    task = create_task("detection")
    task.bind(create_model("gfl_w8", 2, 1), torch.zeros(2, 1, 32, 32))
    task.check_output((84, 2 + 4 * 17), ds, "network 'student'")  # fits: 8x8 + 4x4 + 2x2 points
    with pytest.raises(ConfigError, match=r"network 'student' gives outputs of shape \[84, 9\] per image, but "
                                          r"detection on coco_folder needs the detector contract \[batch, 84, 70\]"):
        task.check_output((84, 9), ds, "network 'student'")
    with pytest.raises(ConfigError, match="must share strides and reg_max"):
        task.bind(create_model("gfl_resnet8", 2, 1), torch.zeros(2, 1, 32, 32))


def test_detection_trains_and_a_killed_run_resumes_bit_identically(tmp_path):
    from conftest import killed_and_resumed

    write_coco(tmp_path / "d")
    cfg = _det_cfg(tmp_path, tmp_path / "d", train={"epochs": 2})
    result = killed_and_resumed(cfg, tmp_path / "runs")
    assert 0.0 <= result["test/map"] <= 100.0 and result["val/map"] >= 0 and "test/ap50" in result


def test_two_gloo_ranks_give_the_same_map_as_one_process(tmp_path):
    """Each rank decodes its shard of the test set; the records gathered over the ranks give the mAP of one
    process evaluating rank 0's weights on the whole set (an odd set: the shards differ in size; batches of
    one image, so that no kernel sees another batch shape)."""
    from conftest import train_ranks

    from kdkit.engine.evaluate import evaluate

    write_coco(tmp_path / "d", n_train=16, n_test=7)
    cfg = _det_cfg(tmp_path, tmp_path / "d", data={"eval_batch_size": 1, "batch_size": 4}, optim={"lr": 0.05},
                   train={"epochs": 6})
    ranks, ddp = train_ranks(cfg, tmp_path)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    single = from_config(load_config(base=cfg), run_dir=tmp_path / "single", log=lambda m: None)
    single.distiller.load_state_dict(ranks[0])
    metrics = evaluate(single.distiller.student, single.loaders.test, task=single.task)
    assert metrics["map"] == ddp["test/map"] and metrics["ap50"] == ddp["test/ap50"] and metrics["map"] > 0


@pytest.fixture(scope="module")
def det_runs(tmp_path_factory):
    """A gfl_w16 teacher and a gfl_w8 student distilled from it by logit matching (no detection method
    needed: mse on the whole output), on a small COCO folder."""
    tmp = tmp_path_factory.mktemp("det")
    write_coco(tmp / "d")
    fast = {"data": {"batch_size": 4}, "optim": {"lr": 0.05}, "train": {"epochs": 6}}
    from_config(load_config(base=_det_cfg(tmp / "t", tmp / "d", model="gfl_w16", **fast)), log=lambda m: None).fit()
    teacher = {"name": "gfl_w16", "checkpoint": str(tmp / "t/run/checkpoint.pt")}
    method = {"name": "logit_mse", "weight": 0.1}
    from_config(load_config(base=_det_cfg(tmp / "runs", tmp / "d", teacher=teacher, method=method, **fast)),
                log=lambda m: None).fit()
    return tmp


def test_report_shows_map_and_the_box_grid(det_runs, tmp_path):
    from PIL import Image

    from kdkit.report import collect, write_report

    written = write_report(collect([det_runs / "runs"]), tmp_path / "report")
    md = written["report.md"].read_text()
    assert "test map (final)" in md and "boxes.png" in md and "top1" not in md
    with Image.open(written["boxes.png"]) as im:
        assert im.size[0] > 4 * 100  # four columns: image, ground truth, teacher, student


def test_export_onnx_gives_the_same_map_and_profile_reports_it(det_runs, tmp_path):
    from kdkit.export import export_network, format_profile, profile

    ckpt = det_runs / "t/run/checkpoint.pt"  # the teacher: trained on the boxes, it finds some
    check = export_network(ckpt, None, "onnx", tmp_path / "m.onnx")
    assert check["metric"] == "map" and check["max_abs_diff"] < 1e-3 and check["images"] == 8
    assert check["onnx_map"] == pytest.approx(check["torch_map"], abs=0.5) and check["torch_map"] > 0
    p = profile(ckpt, batches=(1,), runs=2, onnx=False)
    assert p["test_metric"] == "map" and p["test_map"] == pytest.approx(check["torch_map"]) and p["macs"] > 0
    assert "test map" in format_profile(p)


class _OneLevel(torch.nn.Module):
    """A user's detector, nothing of kdkit inside: one level of stride 8, 4 + 1 bins per side."""

    strides, reg_max = (8,), 4

    def __init__(self, num_classes=2, in_channels=1):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, 2, 1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, num_classes + 4 * 5, 1)

    def forward(self, x):
        return self.head(self.body(x)).flatten(2).transpose(1, 2)


def test_a_users_detector_that_keeps_the_contract_trains(tmp_path):
    from kdkit import register_model
    from kdkit.models import MODELS

    if "one_level_detector" not in MODELS:
        register_model("one_level_detector")(lambda num_classes=2, in_channels=1: _OneLevel(num_classes, in_channels))
    write_coco(tmp_path / "d")
    result = from_config(load_config(base=_det_cfg(tmp_path, tmp_path / "d", model="one_level_detector")),
                         log=lambda m: None).fit()
    assert 0.0 <= result["test/map"] <= 100.0 and result["train/loss"] == result["train/loss"]


def test_teacher_cache_is_refused(det_runs, tmp_path):
    teacher = {"name": "gfl_w16", "checkpoint": str(det_runs / "t/run/checkpoint.pt")}
    cfg = _det_cfg(tmp_path, det_runs / "d", teacher=teacher, method="ld", data={"augment": False},
                   train={"teacher_cache": {"store": "memory"}})
    with pytest.raises(ConfigError, match="detection outputs are dense per point"):
        from_config(load_config(base=cfg), log=lambda m: None)
