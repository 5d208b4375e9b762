"""Segmentation: the task's metrics, masks through the loader, the canvas and mask-folder datasets, the
networks, and end-to-end runs with the dense methods."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit import from_config
from kdkit.config import DataConfig, load_config
from kdkit.data.base import ImageSet
from kdkit.data.canvas import THRESHOLD, make_canvases
from kdkit.data.loader import BatchLoader, random_scale
from kdkit.errors import ConfigError, DatasetError
from kdkit.tasks import create_task
from kdkit.tasks.segmentation import IGNORE

FASHION = Path("/usr/share/datasets/fashion-mnist")
K = 11


def _batch(seed=0, b=8, size=64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, K, size, size, generator=g)
    target = torch.randint(0, K, (b, size, size), generator=g)
    target[:, :4] = IGNORE  # a band of ignored pixels
    return logits, target


def test_confusion_matrix_and_metrics_written_out():
    task = create_task("segmentation")
    logits, target = _batch()
    teacher = logits + 0.5 * torch.randn_like(logits)
    counts = (task.eval_counts(logits[:5], target[:5], teacher[:5])
              + task.eval_counts(logits[5:], target[5:], teacher[5:]))
    m = task.metrics(counts.tolist(), with_teacher=True)
    pred, t, tp_ = logits.argmax(1).numpy(), target.numpy(), teacher.argmax(1).numpy()
    keep = t != IGNORE
    conf = np.zeros((K, K))
    for a, b in zip(t[keep], pred[keep]):
        conf[a, b] += 1
    ious = [conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c]) for c in range(K)]
    assert m["miou"] == pytest.approx(100 * np.mean(ious))
    assert m["pixel_acc"] == pytest.approx(100 * np.trace(conf) / keep.sum())
    assert m["iou/3"] == pytest.approx(100 * ious[3])
    assert m["agreement"] == pytest.approx(100 * (pred == tp_)[keep].mean())
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    assert m["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert float(task.loss(logits, target)) == pytest.approx(float(ce), rel=1e-5)


def test_metrics_agree_with_torchmetrics():
    """mIoU (macro over the classes present), per-class IoU and pixel accuracy against torchmetrics at
    batch 8, 64x64, 11 classes, with ignored pixels and a class that never occurs."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    task = create_task("segmentation")
    logits, target = _batch()
    target[target == 5] = 0
    logits[:, 5] = -100.0  # class 5 in neither the truth nor the prediction
    pred = logits.argmax(1)
    m = task.metrics(task.eval_counts(logits, target, None).tolist(), False)
    kw = {"num_classes": K, "ignore_index": IGNORE}
    assert m["miou"] == pytest.approx(100 * float(MulticlassJaccardIndex(average="macro", **kw)(pred, target)),
                                      rel=1e-6)
    per_class = 100 * MulticlassJaccardIndex(average="none", **kw)(pred, target)
    assert [m[f"iou/{c}"] for c in range(K) if c != 5] == pytest.approx(
        [float(per_class[c]) for c in range(K) if c != 5], rel=1e-5)
    assert m["pixel_acc"] == pytest.approx(100 * float(MulticlassAccuracy(average="micro", **kw)(pred, target)),
                                           rel=1e-6)


def test_a_class_id_beyond_the_network_is_a_clear_error():
    task = create_task("segmentation")
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 7
    with pytest.raises(ConfigError, match="a mask holds class id 7, but the network predicts 3 classes"):
        task.eval_counts(torch.zeros(1, 3, 4, 4), target, None)


def test_miou_skips_absent_classes():
    task = create_task("segmentation")
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    logits = torch.zeros(1, K, 4, 4)
    logits[0, 1, :2] = 5.0  # perfect on classes 0 and 1; the other 9 never occur
    m = task.metrics(task.eval_counts(logits, target, None).tolist(), False)
    assert m["miou"] == pytest.approx(100.0) and "iou/5" not in m


def test_masks_move_with_their_images():
    """Crop and flip move masks exactly as the image; the zoom samples masks by nearest neighbour."""
    n, size = 16, 32
    masks = torch.randint(0, 5, (n, size, size), dtype=torch.uint8)
    images = (masks * 40).unsqueeze(1)  # the image encodes its mask
    loader = BatchLoader(ImageSet(masks, images=images), 8, mean=(0.0,), std=(1.0,), shuffle=True, seed=3,
                         crop_padding=4, flip=True, scale=(0.7, 1.4))
    loader.scale = None  # crop and flip first: exact
    for batch in loader:
        x, y = batch.inputs, batch.targets
        inside = y != IGNORE
        assert y.dtype == torch.int64 and inside.float().mean() > 0.5
        assert torch.equal((x[:, 0] * 255 / 40).round().long()[inside], y[inside])
        assert ((x[:, 0] == 0) | inside).all()  # padding only where the mask is ignored
    scales = torch.tensor([0.7, 1.0, 1.4])
    y = random_scale(masks[:3, None].long(), scales, mask=True)[:, 0]
    for i, s in enumerate(scales.tolist()):  # output pixel j samples the source at (j + 0.5 - size/2) / s
        src = ((torch.arange(size) + 0.5 - size / 2) / s + size / 2 - 0.5).round().long()
        ok = (src >= 0) & (src < size)
        want = torch.full((size, size), IGNORE)
        r, c = torch.meshgrid(src.clamp(0, size - 1), src.clamp(0, size - 1), indexing="ij")
        want = torch.where(ok[:, None] & ok[None, :], masks[i].long()[r, c], want)
        assert (y[i] == want).float().mean() > 0.97  # the nearest pick may differ exactly at .5 ties


def test_canvases_are_exact_and_deterministic():
    """Garments of constant intensity 40 + 20 c: every canvas pixel tells its class, so the mask can be
    checked pixel by pixel; the same seed gives the same bytes."""
    labels = torch.arange(10).repeat(3)
    images = (40 + 20 * labels).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    x, y = make_canvases(images, labels, 50, seed=5)
    assert x.shape == (50, 1, 64, 64) and y.shape == (50, 64, 64)
    on = y > 0
    assert torch.equal(x[:, 0][on].long(), 40 + 20 * (y[on].long() - 1))
    assert (x[:, 0][~on] == 0).all() and x[:, 0][on].min() > THRESHOLD
    per_canvas = [len(torch.unique(m)) - 1 for m in y]
    assert 1 <= min(per_canvas) and max(per_canvas) <= 4
    x2, y2 = make_canvases(images, labels, 50, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(y, make_canvases(images, labels, 50, seed=6)[1])


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_canvas_from_the_real_images():
    from kdkit.data import load_dataset

    ds = load_dataset(DataConfig(name="fashion_canvas", download=False))
    assert ds.num_classes == 11 and ds.image_size == (64, 64) and len(ds.train) == 10_000 and len(ds.test) == 2_000
    on = ds.train.labels[:200] > 0
    assert (ds.train.images[:200, 0][on] > THRESHOLD).all() and (ds.train.images[:200, 0][~on] == 0).all()
    assert ds.classes[0] == "background" and ds.classes[1] == "T-shirt/top"


def _write_folder(root: Path, n=12, size=32, palette=True, classes=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            r, c = rng.integers(0, size // 2, 2)
            mask[r:r + size // 2, c:c + size // 2] = rng.integers(1, classes)
            mask[0, :] = IGNORE
            img = (mask % IGNORE * 70 + rng.integers(0, 20, mask.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(np.stack([img] * 3, -1)).save(root / split / "images" / f"{i:03d}.jpg")
            m = Image.fromarray(mask)
            if palette:
                m = m.convert("P")
                m.putpalette([v for k in range(256) for v in (k, 255 - k, k // 2)])
            m.save(root / split / "masks" / f"{i:03d}.png")


def test_seg_folder_reads_palette_masks(tmp_path):
    from kdkit.data import load_dataset

    _write_folder(tmp_path)
    ds = load_dataset(DataConfig(name="seg_folder", root=str(tmp_path), image_size=32))
    assert ds.in_channels == 3 and ds.num_classes == 3 and len(ds.train) == 12
    assert ds.train.labels.dtype == torch.uint8 and (ds.train.labels[:, 0] == IGNORE).all()


@pytest.mark.parametrize("damage, message", [
    ("size", "is 16x16 but its image"),
    ("no_masks", "there is no mask folder"),
    ("missing", "has no mask"),
    ("classes", "classes.txt names 2 classes"),
    ("rgb", "not colour pictures"),
])
def test_seg_folder_bad_input(tmp_path, damage, message):
    from PIL import Image

    from kdkit.data import load_dataset

    _write_folder(tmp_path)
    masks = tmp_path / "train" / "masks"
    if damage == "size":
        Image.new("L", (16, 16)).save(masks / "003.png")
    elif damage == "no_masks":
        for p in masks.iterdir():
            p.unlink()
        masks.rmdir()
    elif damage == "missing":
        (masks / "004.png").unlink()
    elif damage == "classes":
        (tmp_path / "classes.txt").write_text("background\nbox\n")
    elif damage == "rgb":
        Image.new("RGB", (32, 32)).save(masks / "001.png")
    with pytest.raises(DatasetError, match=message):
        load_dataset(DataConfig(name="seg_folder", root=str(tmp_path), image_size=32))


def _seg_cfg(tmp_path, folder, **over):
    base = {"task": "segmentation", "model": "unet_w8",
            "data": {"name": "seg_folder", "root": str(folder), "image_size": 32, "batch_size": 8},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "run"}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return load_config(base=base)


def test_bad_networks_are_refused_before_training(tmp_path):
    _write_folder(tmp_path / "d")
    with pytest.raises(ConfigError, match="output stride 8; got 36x36"):
        from_config(_seg_cfg(tmp_path, tmp_path / "d", data={"image_size": 36}), log=lambda m: None)
    with pytest.raises(ConfigError, match=r"needs logits \[batch, 3, 32, 32\]"):
        from_config(_seg_cfg(tmp_path, tmp_path / "d", model="cnn_tiny"), log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_teacher_cache_is_refused(tmp_path):
    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path / "t", tmp_path / "d"), log=lambda m: None).fit()
    teacher = {"name": "unet_w8", "checkpoint": str(tmp_path / "t/run/checkpoint.pt")}
    cfg = _seg_cfg(tmp_path, tmp_path / "d", teacher=teacher, method="skd_pixel", data={"augment": False},
                   train={"teacher_cache": {"store": "memory"}})
    with pytest.raises(ConfigError, match="segmentation outputs are per pixel"):
        from_config(cfg, log=lambda m: None)


@pytest.mark.parametrize("method", ["skd_pixel", "skd_pair", "cwd", "skd_holistic", "fitnets", "at",
                                    {"name": "cwd", "student_layer": "dec1", "teacher_layer": "dec1"}])
def test_dense_methods_train_end_to_end(tmp_path, method):
    """Teacher unet_w16, student unet_w8: every dense method (and FitNets and AT, unchanged) trains, the
    teacher stays fixed, and validation reports mIoU."""
    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path / "t", tmp_path / "d", model="unet_w16"), log=lambda m: None).fit()
    ckpt = str(tmp_path / "t/run/checkpoint.pt")
    trainer = from_config(_seg_cfg(tmp_path, tmp_path / "d", teacher={"name": "unet_w16", "checkpoint": ckpt},
                                   method=method, train={"epochs": 2}), log=lambda m: None)
    before = {k: v.clone() for k, v in trainer.distiller.teachers[0].state_dict().items()}
    result = trainer.fit()
    assert 0.0 <= result["test/miou"] <= 100.0 and "val/miou" in result
    after = trainer.distiller.teachers[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", [m for m in __import__("kdkit").list_methods(task="segmentation") if m != "vanilla"])
def test_segmentation_method_steps_and_round_trip(name):
    """On a unet_w16 -> unet_w8 pair with batch 8 of 32x32 maps: a few steps lower the loss on a fixed batch,
    the teacher is untouched, every helper is trained, and the state survives a save/load."""
    import copy
    import io

    from kdkit import create_method, create_model
    from kdkit.methods import Distiller
    from kdkit.methods.adversary import Adversary

    def make():
        torch.manual_seed(0)
        s = create_model("unet_w8", num_classes=K, in_channels=1)
        t = create_model("unet_w16", num_classes=K, in_channels=1)
        return Distiller(s, [create_method(name)], [t], (1, 32, 32), task=create_task("segmentation")), t

    d, teacher = make()
    before = copy.deepcopy(teacher.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, K, (8, 32, 32), generator=g)
    opt = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.9)
    d.train()
    losses, trained = [], set()
    for _ in range(8):
        terms = d(x, y, epoch=0)
        loss = sum(terms.values())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        trained |= {n for n, p in d.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
        d.after_step()  # an adversary's own step
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    adversaries = {f"{m}.{n}" for m, mod in d.named_modules() if isinstance(mod, Adversary)
                   for n, _ in mod.named_parameters()}
    helpers = {n for n, _ in d.named_parameters() if n.startswith("methods.")} - adversaries
    assert helpers <= trained and not adversaries & trained  # adversaries: no gradient from the student's loss
    start = make()[0].state_dict()
    assert all(not torch.equal(d.state_dict()[k], start[k]) for k in adversaries if k.endswith("bias"))
    buf = io.BytesIO()
    torch.save(d.state_dict(), buf)
    buf.seek(0)
    d2, _ = make()
    d2.load_state_dict(torch.load(buf, weights_only=True))
    d.eval(), d2.eval()
    for k, v in d(x, y).items():
        torch.testing.assert_close(v, d2(x, y)[k])


def test_adversary_update_is_sgd_with_momentum():
    """The adversary's step equals torch.optim.SGD's (momentum, weight decay) over three steps."""
    from kdkit.methods.adversary import Adversary

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    ref = torch.nn.Linear(4, 1)
    ref.load_state_dict(net.state_dict())
    adv = Adversary(net, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(3):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        adv.update(lambda x=x: adv(x).pow(2).mean())
        opt.zero_grad()
        ref(x).pow(2).mean().backward()
        opt.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in net.parameters()) and all(p.grad is None for p in net.parameters())


def test_holistic_run_killed_and_resumed_is_bit_identical(tmp_path):
    """skd_holistic owns a critic with its own optimiser: a run stopped after epoch 1 and resumed ends with
    the same student, critic and critic momentum, bit for bit, as an uninterrupted one; the critic moved."""
    from conftest import killed_and_resumed

    from kdkit.engine.checkpoint import load_checkpoint

    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path / "t", tmp_path / "d"), log=lambda m: None).fit()
    ckpt = str(tmp_path / "t/run/checkpoint.pt")
    cfg = {"task": "segmentation", "model": "unet_w8", "teacher": {"name": "unet_w8", "checkpoint": ckpt},
           "method": ["skd_pixel", {"name": "skd_holistic", "width": 8, "with_image": True}],
           "data": {"name": "seg_folder", "root": str(tmp_path / "d"), "image_size": 32, "batch_size": 4},
           "train": {"epochs": 2, "progress": False}}
    killed_and_resumed(cfg, tmp_path / "runs")
    state = load_checkpoint(tmp_path / "runs/full/checkpoint.pt")["distiller"]
    critic = {k: v for k, v in state.items() if ".critic." in k}
    assert any("momentum" in k for k in critic) and int(state["methods.1.critic.steps"]) == 2 * 2
    fresh = from_config(load_config(base={**cfg, "train": {**cfg["train"], "out_dir": str(tmp_path / "x")}}),
                        log=lambda m: None).distiller.state_dict()
    moved = [k for k in critic if k.endswith("original") and not torch.equal(critic[k], fresh[k])]
    assert moved


def test_two_gloo_ranks_count_the_same_confusion_matrix_as_one_process(tmp_path):
    """skd_holistic under 2-rank DDP (gloo): the ranks end identical (the critic's gradients averaged over
    them), and the test metrics from the confusion matrix summed over the ranks' shards equal one process
    evaluating rank 0's weights on the whole test set."""
    from conftest import train_ranks

    from kdkit.engine.evaluate import evaluate

    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path / "t", tmp_path / "d"), log=lambda m: None).fit()
    cfg = {"task": "segmentation", "model": "unet_w8",
           "teacher": {"name": "unet_w8", "checkpoint": str(tmp_path / "t/run/checkpoint.pt")},
           "method": {"name": "skd_holistic", "width": 8},
           "data": {"name": "seg_folder", "root": str(tmp_path / "d"), "image_size": 32, "batch_size": 4,
                    "eval_batch_size": 1},
           "train": {"epochs": 1, "progress": False}}
    ranks, ddp = train_ranks(cfg, tmp_path)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert ddp["train/skd_holistic/critic_loss"] >= 0  # the critic's own loss, averaged over the ranks, logged
    single = from_config(load_config(base=cfg), run_dir=tmp_path / "single", log=lambda m: None)
    single.distiller.load_state_dict(ranks[0])
    metrics = evaluate(single.distiller.student, single.loaders.test, task=single.task)
    assert metrics["miou"] == ddp["test/miou"] and metrics["pixel_acc"] == ddp["test/pixel_acc"]
    assert {k: v for k, v in metrics.items() if k.startswith("iou/")} == \
        {k[5:]: v for k, v in ddp.items() if k.startswith("test/iou/")}


def test_report_shows_miou_and_the_picture_grid(tmp_path):
    from PIL import Image

    from kdkit.report import collect, write_report

    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path / "t", tmp_path / "d"), log=lambda m: None).fit()
    teacher = {"name": "unet_w8", "checkpoint": str(tmp_path / "t/run/checkpoint.pt")}
    from_config(_seg_cfg(tmp_path / "runs", tmp_path / "d", teacher=teacher, method="skd_pixel"),
                log=lambda m: None).fit()
    written = write_report(collect([tmp_path / "runs"]), tmp_path / "report")
    md = written["report.md"].read_text()
    assert "test miou (final)" in md and "masks.png" in md and "top1" not in md
    with Image.open(written["masks.png"]) as im:
        assert im.size[0] > 4 * 100  # four columns: image, ground truth, teacher, student


def test_checkpoint_records_class_count_and_output_stride(tmp_path):
    from kdkit.engine.checkpoint import load_checkpoint

    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path, tmp_path / "d"), log=lambda m: None).fit()
    rec = load_checkpoint(tmp_path / "run/checkpoint.pt")["model"]
    assert rec["num_classes"] == 3 and rec["output_stride"] == 8 and rec["name"] == "unet_w8"
    from kdkit import create_model

    assert create_model("deeplabv3_resnet8x4", num_classes=3, in_channels=1).output_stride == 4


class _DictNet(torch.nn.Module):
    """A user's network in torchvision's segmentation form: ``{"out": logits, "aux": ...}``."""

    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.body = torch.nn.Conv2d(in_channels, 8, 3, padding=1)
        self.cls = torch.nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        f = torch.relu(self.body(x))
        return {"out": self.cls(f), "aux": f}


def test_any_module_with_an_out_dict_is_a_student(tmp_path):
    from kdkit import register_model
    from kdkit.models import MODELS

    if "seg_dict_net" not in MODELS:
        register_model("seg_dict_net")(lambda num_classes=3, in_channels=3: _DictNet(num_classes, in_channels))
    _write_folder(tmp_path / "d")
    result = from_config(_seg_cfg(tmp_path, tmp_path / "d", model="seg_dict_net"), log=lambda m: None).fit()
    assert 0.0 <= result["test/miou"] <= 100.0


def test_export_and_profile_a_segmentation_network(tmp_path):
    from kdkit.export import export_network, profile

    _write_folder(tmp_path / "d")
    from_config(_seg_cfg(tmp_path, tmp_path / "d"), log=lambda m: None).fit()
    ckpt = tmp_path / "run/checkpoint.pt"
    check = export_network(ckpt, None, "onnx", tmp_path / "m.onnx")
    assert check["top1_agreement"] > 99.9 and check["max_abs_diff"] < 1e-3 and check["images"] == 12
    assert check["torch_top1"] == pytest.approx(check["onnx_top1"], abs=0.1) and 0 <= check["torch_top1"] <= 100
    p = profile(ckpt, batches=(1,), runs=2, onnx=False)
    assert p["test_metric"] == "miou" and 0 <= p["test_miou"] <= 100 and p["macs"] > 0
