"""The detection distillation methods: agreement with the reference formulas at realistic sizes (FGD with
MMRazor's, LD with MMDetection's), the pieces of FGFI and Chen et al., and end-to-end runs."""

import pytest
import reference_detection as ref
import torch
from torch import nn

from kdkit import create_method, from_config
from kdkit.config import load_config
from kdkit.errors import ConfigError
from kdkit.losses.detection_kd import GlobalContext, bounded_regression, imitation_mask
from kdkit.methods.base import Outputs
from kdkit.tasks import create_task
from kdkit.tasks.detection import Layout


def _task(k=10):
    task = create_task("detection")
    task.layout, task.num_classes = Layout((4, 8, 16), 16, (64, 64)), k
    return task


def _targets(b=64, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, m, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 6 + torch.rand(b, m, 2, generator=g) * 20], -1).clamp(max=64)
    cls = torch.randint(0, 10, (b, m, 1), generator=g).float()
    t = torch.cat([cls, boxes], -1)
    t[torch.rand(b, m, generator=g) < 0.4] = -1.0
    return t


def _outputs(task, targets, s_logits=None, t_logits=None, s_feats=None, t_feats=None):
    return Outputs(inputs=None, targets=targets, index=None, epoch=0, s_logits=s_logits, t_logits=[t_logits],
                   s_feats=s_feats or {}, t_feats=t_feats or {})


@pytest.mark.parametrize("size,channels", [(16, 64), (8, 32)])
def test_fgd_equals_mmrazor(size, channels):
    g = torch.Generator().manual_seed(size)
    task, targets = _task(), _targets()
    s = torch.randn(64, channels, size, size, generator=g, requires_grad=True)
    t = torch.randn(64, channels, size, size, generator=g)
    m = create_method("fgd", temperature=0.5, alpha=0.002, beta=0.001, gamma=0.001, lambda_=5e-6)
    m.task, m.student_specs, m.teacher_specs = task, ["f"], ["f"]
    m.connectors, m.relations = nn.ModuleList([nn.Identity()]), nn.ModuleList([GlobalContext(channels)])
    for p in m.relations.parameters():  # not the identity start: every part of the block counts
        nn.init.normal_(p, std=0.1, generator=g)
    ours = sum(m.losses(_outputs(task, targets, torch.zeros(64, 1), torch.zeros(64, 1), {"f": s}, {"f": t})).values())
    valid = targets[..., 0] >= 0
    want = ref.fgd(s, t, [targets[i, valid[i], 1:] for i in range(64)], (64, 64), 0.5, 0.002, 0.001, 0.001, 5e-6,
                   m.relations[0])
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)
    (ga,) = torch.autograd.grad(ours, s)
    (gb,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-9)


def test_ld_equals_mmdetection():
    g = torch.Generator().manual_seed(0)
    task, targets = _task(), _targets()
    s = torch.randn(64, 336, 10 + 68, generator=g, requires_grad=True)
    t = torch.randn(64, 336, 10 + 68, generator=g) * 2
    m = create_method("ld", weight=0.25, temperature=10.0)
    m.task = task
    ours = m.cfg.weight * m.losses(_outputs(task, targets, s, t))["ld"]
    b, a, _, _ = m.positives(_outputs(task, targets, s, t))
    assert len(b) > 200  # realistic: hundreds of positives
    weight = s[b, a, :10].detach().sigmoid().max(1)[0][:, None].expand(-1, 4).reshape(-1)
    want = ref.ld(s[b, a, 10:].reshape(-1, 17), t[b, a, 10:].reshape(-1, 17), weight, 10.0, 0.25)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(want, s)[0], rtol=1e-4, atol=1e-10)


def test_bounded_regression_counts_only_where_the_teacher_is_not_beaten():
    target = torch.zeros(3, 4)
    student = torch.tensor([[1.0, 0, 0, 0], [0.1, 0, 0, 0], [0.5, 0, 0, 0]])
    teacher = torch.tensor([[0.5, 0, 0, 0], [1.0, 0, 0, 0], [0.5, 0, 0, 0]])
    # worse than the teacher: counted; better, or as good (no margin): not
    assert bounded_regression(student, teacher, target).tolist() == pytest.approx([1.0, 0.0, 0.0])
    # a margin makes the student chase the teacher's error a bit further
    assert bounded_regression(student, teacher, target, margin=1.0).tolist() == pytest.approx([1.0, 0.01, 0.25])


def test_imitation_mask_keeps_the_anchors_near_each_box():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [30, 30, 40, 40], [0, 0, 40, 40]])
    boxes = torch.tensor([[[0.0, 0, 10, 10], [31, 31, 39, 39]]])
    mask = imitation_mask(anchors, boxes, torch.tensor([[True, False]]), psi=0.5)
    assert mask.tolist() == [[True, False, False, False]]  # IoU 1, 1/7, 0, 1/16 against the best 1
    mask = imitation_mask(anchors, boxes, torch.tensor([[True, True]]), psi=0.1)
    assert mask.tolist() == [[True, True, True, False]]


def test_a_detection_method_on_a_classifier_run_is_refused(tmp_path, teacher_ckpt):
    cfg = load_config(base={"model": "cnn_tiny", "data": {"name": "digits"}, "method": "ld",
                            "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
                            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="method ld distils detectors: use it with task: detection"):
        from_config(cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def det_teacher(tmp_path_factory):
    from test_detection import _det_cfg, write_coco

    tmp = tmp_path_factory.mktemp("detm")
    write_coco(tmp / "d")
    cfg = _det_cfg(tmp / "t", tmp / "d", model="gfl_w16", data={"batch_size": 4}, train={"epochs": 2})
    from_config(load_config(base=cfg), log=lambda m: None).fit()
    return tmp


@pytest.mark.parametrize("method", ["fgfi", "chen_od", "fgd", "ld", "det_kd",
                                    {"name": "fgd", "student_layers": ["neck.out1"], "teacher_layers": ["neck.out1"]}])
def test_detection_methods_train_end_to_end(det_teacher, tmp_path, method):
    """Teacher gfl_w16, student gfl_w8 (other FPN widths: the connectors map the channels): each method's
    terms are finite and move the student, the teacher stays fixed, and the run reports mAP."""
    from test_detection import _det_cfg

    teacher = {"name": "gfl_w16", "checkpoint": str(det_teacher / "t/run/checkpoint.pt")}
    cfg = _det_cfg(tmp_path, det_teacher / "d", teacher=teacher, method=method, data={"batch_size": 4})
    trainer = from_config(load_config(base=cfg), log=lambda m: None)
    before = {k: v.clone() for k, v in trainer.distiller.teachers[0].state_dict().items()}
    result = trainer.fit()
    name = method if isinstance(method, str) else method["name"]
    terms = {k: v for k, v in result.items() if k.startswith("train/") and k not in ("train/loss", "train/ce")}
    assert terms and all(v == v and abs(v) < 1e6 for v in terms.values()), terms
    assert any(name.split("_")[0] in k for k in terms) and 0 <= result["test/map"] <= 100
    after = trainer.distiller.teachers[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("size", [16, 8])
def test_fgfi_equals_the_authors_loss(size):
    """On one FPN level (the authors' single map): the same mask and the same normalisation."""
    from kdkit.tasks.boxes import points

    g = torch.Generator().manual_seed(size)
    task, targets = _task(), _targets()
    s = torch.randn(64, 32, size, size, generator=g, requires_grad=True)
    t = torch.randn(64, 32, size, size, generator=g)
    m = create_method("fgfi", weight=0.01, psi=0.5, anchor_scale=8.0)
    m.task, m.student_specs, m.teacher_specs, m.connectors = task, ["f"], ["f"], nn.ModuleList([nn.Identity()])
    ours = m.cfg.weight * m.losses(_outputs(task, targets, torch.zeros(64, 1), torch.zeros(64, 1), {"f": s},
                                            {"f": t}))["fgfi"]
    stride = 64 / size
    centres = points([(size, size)], (stride,))
    anchors = torch.cat([centres - 4 * stride, centres + 4 * stride], 1)
    valid = targets[..., 0] >= 0
    want = ref.fgfi(s, t, anchors, [targets[i, valid[i], 1:] for i in range(64)], 0.5, 0.01)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(want, s)[0], rtol=1e-4, atol=1e-10)


def test_vlr_region_equals_the_ld_authors():
    from kdkit.losses.detection import vlr_region

    task, targets = _task(), _targets()
    pts, strides = task.layout.grid("cpu")
    counts = [h * w for h, w in task.layout.sizes]
    anchors = torch.cat([pts - strides[:, None] * 4, pts + strides[:, None] * 4], 1)
    ours = vlr_region(pts, strides, counts, targets[..., 1:], targets[..., 0] >= 0, 0.25)
    for i in range(64):
        keep = targets[i, :, 0] >= 0
        want = ref.vlr_region(anchors, counts, targets[i, keep, 1:]) if keep.any() else torch.zeros(len(pts))
        torch.testing.assert_close(ours[i], want, rtol=1e-5, atol=1e-6)
    assert (ours > 0).sum() > 64  # the region holds points beyond the positives


def test_ld_vlr_term_is_the_authors_weighting():
    """The VLR term: KL at the region's points weighted by their IoU, over 16, times ld's weight."""
    from kdkit.losses.detection import vlr_region

    g = torch.Generator().manual_seed(1)
    task, targets = _task(), _targets()
    s = torch.randn(64, 336, 10 + 68, generator=g, requires_grad=True)
    t = torch.randn(64, 336, 10 + 68, generator=g) * 2
    m = create_method("ld")
    m.task = task
    terms = m.losses(_outputs(task, targets, s, t))
    pts, strides = task.layout.grid("cpu")
    region = vlr_region(pts, strides, [h * w for h, w in task.layout.sizes], targets[..., 1:], targets[..., 0] >= 0)
    b, a = (region > 0).nonzero(as_tuple=True)
    w = region[b, a][:, None].expand(-1, 4).reshape(-1)
    want = ref.ld(s[b, a, 10:].reshape(-1, 17), t[b, a, 10:].reshape(-1, 17), w, 10.0, 0.25) * 4 / 16
    torch.testing.assert_close(m.cfg.weight * terms["ld/vlr"], want, rtol=1e-5, atol=1e-9)
    plain = create_method("ld", vlr=0.0)
    plain.task = task
    assert set(plain.losses(_outputs(task, targets, s, t))) == {"ld"}  # MMDetection's head: the main region only
