"""CRD (queue and bank), IRG and ReviewKD: losses by hand and method mechanics."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ConfigError
from kdkit.losses import hierarchical_context_loss, info_nce, irg_edge, irg_transformation
from kdkit.methods import Distiller, create_method
from kdkit.models import create_model


def _t(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_info_nce_by_hand():
    a, p, n = (F.normalize(_t(i, *s), dim=1) for i, s in ((0, (2, 3)), (1, (2, 3)), (2, (4, 3))))
    expected = 0.0
    for b in range(2):
        logits = [sum(x * y for x, y in zip(a[b].tolist(), p[b].tolist())) / 0.5]
        logits += [sum(x * y for x, y in zip(a[b].tolist(), n[k].tolist())) / 0.5 for k in range(4)]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert info_nce(a, p, n, 0.5).item() == pytest.approx(expected / 2, rel=1e-5)
    per_sample = n.unsqueeze(0).expand(2, 4, 3)
    torch.testing.assert_close(info_nce(a, p, per_sample, 0.5), info_nce(a, p, n, 0.5))


def _crd(memory, num_samples=None, negatives=6):
    s, t = create_model("cnn_tiny", num_classes=5, in_channels=3), create_model("resnet8", num_classes=5)
    m = create_method("crd", memory=memory, negatives=negatives, feat_dim=4)
    return Distiller(s, [m], [t], (3, 16, 16), num_samples=num_samples), m


def test_crd_queue_is_fixed_size_fifo():
    d, m = _crd("queue")
    assert m.mem_s.shape == (6, 4) and not m.needs_sample_index
    x, y = _t(3, 4, 3, 16, 16), torch.randint(0, 5, (4,))
    d.train()
    with torch.no_grad():
        d(x, y)
    assert int(m.ptr) == 0  # enqueued after the optimiser step, not in the forward
    d.after_step()
    assert int(m.ptr) == 4
    with torch.no_grad():
        e_t = m.embed_t(d.teacher_outputs(x)[1]["teacher"][m.teacher_specs[0]])
    torch.testing.assert_close(m.mem_t[:4], e_t)  # newest entries in FIFO order
    with torch.no_grad():
        d(x, y)
    d.after_step()
    assert int(m.ptr) == 2 and m.mem_s.shape == (6, 4)  # wrapped around, size unchanged
    d.eval()
    before = m.mem_s.clone()
    with torch.no_grad():
        d(x, y)
    d.after_step()
    assert torch.equal(before, m.mem_s)  # evaluation does not touch the memory


def test_crd_bank_is_dataset_sized_and_needs_indices():
    with pytest.raises(ConfigError, match="training-set size"):
        _crd("bank")
    d, m = _crd("bank", num_samples=10)
    assert m.mem_s.shape == (10, 4) and m.needs_sample_index
    x, y = _t(4, 3, 3, 16, 16), torch.randint(0, 5, (3,))
    with pytest.raises(ConfigError, match="sample indices"):
        d(x, y)
    idx = torch.tensor([7, 2, 9])
    old = m.mem_s.clone()
    d.train()
    with torch.no_grad():
        d(x, y, index=idx)
    d.after_step()
    changed = (m.mem_s != old).any(1).nonzero().flatten().tolist()
    assert changed == [2, 7, 9]
    e_s = m.embed_s(d.s_tap.features[m.student_specs[0]])
    torch.testing.assert_close(m.mem_s[idx], F.normalize(0.5 * old[idx] + 0.5 * e_s, dim=1))


def test_crd_trains_through_trainer_with_bank(tmp_path, digits_cfg, teacher_ckpt):
    from kdkit import from_config

    cfg = digits_cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                     method={"name": "crd", "memory": "bank"}, train={"epochs": 1})
    trainer = from_config(cfg, log=lambda *_: None)
    trainer.fit()
    assert trainer.distiller.methods[0].mem_s.shape[0] == len(trainer.loaders.train.data)


def test_irg_losses_by_hand():
    fs, ft = _t(5, 3, 4, 2, 2), _t(6, 3, 6)
    ps, pt = fs.mean((2, 3)), ft

    def nd(v):
        d = torch.cdist(v, v)
        return d / d[d > 0].mean()

    torch.testing.assert_close(irg_edge(fs, ft), ((nd(ps) - nd(pt)) ** 2).mean())
    assert irg_edge(ft * 3, ft) < 1e-10
    a, b = _t(7, 3, 4), _t(8, 3, 4)  # equal widths: plain normalised distances
    moves = (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(1)
    assert irg_transformation(a, b, a, b) < 1e-12
    c, e = _t(9, 3, 4), _t(10, 3, 4)
    other = (F.normalize(c, dim=1) - F.normalize(e, dim=1)).pow(2).sum(1)
    torch.testing.assert_close(irg_transformation(a, b, c, e), ((moves - other) ** 2).mean())


def test_irg_method_terms_and_zero_for_copy():
    t = create_model("resnet8", num_classes=5)
    d = Distiller(copy.deepcopy(t), [create_method("irg")], [t], (3, 16, 16)).eval()
    terms = d(_t(11, 4, 3, 16, 16), torch.randint(0, 5, (4,)))
    assert set(terms) == {"ce", "irg_vertex", "irg_edge", "irg_transformation"}
    assert all(terms[k] < 1e-8 for k in ("irg_vertex", "irg_edge", "irg_transformation"))


def test_hierarchical_context_loss_by_hand():
    fs, ft = _t(12, 2, 3, 8, 8), _t(13, 2, 3, 8, 8)
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    pool = F.adaptive_avg_pool2d
    expected = (mse(fs, ft) + 0.5 * mse(pool(fs, 4), pool(ft, 4)) + 0.25 * mse(pool(fs, 2), pool(ft, 2))
                + 0.125 * mse(pool(fs, 1), pool(ft, 1))) / 1.875
    torch.testing.assert_close(hierarchical_context_loss(fs, ft), expected)


def test_reviewkd_fuses_deeper_levels():
    s, t = create_model("resnet8", num_classes=5), create_model("wrn_16_2", num_classes=5)
    m = create_method("reviewkd", warmup_epochs=0)
    d = Distiller(s, [m], [t], (3, 16, 16))
    assert [a.att is not None for a in m.abfs] == [True, True, False]  # the deepest level has nothing to fuse
    terms = d(_t(14, 4, 3, 16, 16), torch.randint(0, 5, (4,)))
    terms["reviewkd"].backward()
    assert s.layer3[0].conv1.weight.grad.abs().sum() > 0
    # the deepest student stage receives gradient from the shallow teacher level through the fusion
    d.zero_grad()
    m2 = create_method("reviewkd", warmup_epochs=0, student_layers=["layer2", "layer3"],
                       teacher_layers=["block1", "block2"])
    d2 = Distiller(s, [m2], [t], (3, 16, 16))
    with d2.s_tap:
        s(_t(14, 4, 3, 16, 16))
    f3 = d2.s_tap.features["layer3"]
    y, fused = m2.abfs[1](f3, None)
    y2, _ = m2.abfs[0](d2.s_tap.features["layer2"], fused)
    grad = torch.autograd.grad(y2.sum(), f3)[0]
    assert grad.abs().sum() > 0
