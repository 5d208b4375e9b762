"""NST, FSP, AB, FT, VID and gradient-AT losses against independent computations, and method behaviour."""

import copy
import math

import pytest
import torch

from kdkit.losses import ab_loss, factor_transfer, fsp_matrix, input_gradient_attention, nst_mmd, vid_loss
from kdkit.methods import Distiller, create_method
from kdkit.models import create_model


def _t(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", ["linear", "poly", "gaussian"])
def test_nst_mmd_by_hand(kernel):
    fs, ft = _t(0, 1, 3, 2, 2), _t(1, 1, 2, 2, 2)

    def rows(f):
        out = []
        for ch in f[0].reshape(f.shape[1], -1).tolist():
            n = math.sqrt(sum(v * v for v in ch))
            out.append([v / n for v in ch])
        return out

    def k(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        if kernel == "linear":
            return dot
        if kernel == "poly":
            return dot * dot
        return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b)) / 2)

    s, t = rows(fs), rows(ft)
    mean = lambda A, B: sum(k(a, b) for a in A for b in B) / (len(A) * len(B))  # noqa: E731
    expected = mean(s, s) + mean(t, t) - 2 * mean(s, t)
    assert nst_mmd(fs, ft, kernel).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert nst_mmd(ft, ft, kernel).abs() < 1e-6
    with pytest.raises(ValueError, match="kernel"):
        nst_mmd(fs, ft, "cubic")


def test_fsp_matrix_by_hand_and_pooling():
    f1, f2 = _t(2, 2, 3, 4, 4), _t(3, 2, 5, 4, 4)
    g = fsp_matrix(f1, f2)
    assert g.shape == (2, 3, 5)
    expected = sum(f1[1, 2, h, w].item() * f2[1, 4, h, w].item() for h in range(4) for w in range(4)) / 16
    assert g[1, 2, 4].item() == pytest.approx(expected, rel=1e-5)
    big = _t(4, 2, 3, 8, 8)
    torch.testing.assert_close(fsp_matrix(big, f2), fsp_matrix(torch.nn.functional.avg_pool2d(big, 2), f2))


def test_ab_loss_by_hand():
    s = torch.tensor([[[[2.0, 0.5]], [[-2.0, -0.2]]]])  # [1, 2, 1, 2]
    t = torch.tensor([[[[1.0, 3.0]], [[-1.0, 0.5]]]])
    # active teacher neurons: (0,0),(0,1),(1,1); inactive: (1,0)
    # active: relu(1-2)^2=0, relu(1-0.5)^2=0.25, relu(1+0.2)^2=1.44 ; inactive: relu(1-2)^2=0
    assert ab_loss(s, t).item() == pytest.approx((0 + 0.25 + 0 + 1.44) / 4)
    assert ab_loss(torch.where(t > 0, 5.0, -5.0), t) == 0


def test_factor_transfer_and_vid_by_hand():
    fs, ft = _t(5, 3, 2, 2, 2), _t(6, 3, 2, 2, 2)
    expected = 0.0
    for b in range(3):
        a, c = fs[b].flatten(), ft[b].flatten()
        expected += (a / a.norm() - c / c.norm()).abs().sum().item() / a.numel()  # mean over 8 elements
    assert factor_transfer(fs, ft).item() == pytest.approx(expected / 3, rel=1e-5)
    # p=2: root of the mean squared difference per sample
    expected2 = sum(((fs[b].flatten() / fs[b].norm() - ft[b].flatten() / ft[b].norm()) ** 2).mean().sqrt().item()
                    for b in range(3))
    assert factor_transfer(fs, ft, p=2).item() == pytest.approx(expected2 / 3, rel=1e-5)
    assert factor_transfer(ft * 7, ft) < 1e-6
    mean, log_var = _t(7, 2, 3, 2, 2), torch.tensor([0.0, 1.0, -1.0])
    var = [1.0, math.e, 1 / math.e]
    expected = sum(0.5 * (math.log(var[c]) + (ft[b, c, h, w].item() - mean[b, c, h, w].item()) ** 2 / var[c])
                   for b in range(2) for c in range(2) for h in range(2) for w in range(2))
    t2 = ft[:2, :2]
    m2, lv2 = mean[:, :2], log_var[:2]
    assert vid_loss(m2, lv2, t2).item() == pytest.approx(expected / 16, rel=1e-5)


def test_input_gradient_attention_by_hand():
    js, jt = _t(8, 2, 1, 2, 2), _t(9, 2, 1, 2, 2)
    expected = sum(((js[b].flatten() / js[b].norm()) - (jt[b].flatten() / jt[b].norm())).pow(2).sum().item()
                   for b in range(2)) / 2
    assert input_gradient_attention(js, jt).item() == pytest.approx(expected, rel=1e-5)
    assert input_gradient_attention(jt * 1e-4, jt) < 1e-10  # scale-free


def test_at_grad_zero_for_identical_student_and_matches_autograd():
    torch.manual_seed(0)
    t = create_model("cnn_tiny", num_classes=4, in_channels=1).eval()
    s = copy.deepcopy(t)
    d = Distiller(s, [create_method("at_grad")], [t], (1, 8, 8))
    d.train()
    s.eval()  # same BN behaviour as the teacher, so the gradients are identical
    x, y = _t(10, 3, 1, 8, 8), torch.tensor([0, 1, 3])
    terms = d(x, y)
    assert terms["at_grad"] < 1e-10
    d.eval()
    assert "at_grad" not in d(x, y)  # no input gradients in evaluation


def test_ft_paraphraser_pretrained_then_frozen():
    s, t = create_model("resnet8", num_classes=5), create_model("wrn_16_2", num_classes=5)
    m = create_method("ft", stage1_epochs=1)
    d = Distiller(s, [m], [t], (3, 16, 16))
    x, y = _t(11, 8, 3, 16, 16), torch.randint(0, 5, (8,))
    terms = d(x, y, epoch=0)
    assert set(terms) == {"ft_reconstruction"}
    terms["ft_reconstruction"].backward()
    assert all(p.grad is None for p in s.parameters())  # the student is not trained in pre-training
    assert any(p.grad is not None for p in m.paraphraser.parameters())
    d.zero_grad()
    before = copy.deepcopy(m.paraphraser.state_dict())
    terms = d(x, y, epoch=1)
    assert set(terms) == {"ce", "ft"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in m.paraphraser.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.paraphraser.state_dict().items())  # BN stats too


def test_fsp_and_ab_stages():
    s, t = create_model("resnet8", num_classes=5), create_model("resnet20", num_classes=5)
    for name in ("fsp", "ab"):
        d = Distiller(s, [create_method(name, stage1_epochs=2)], [t], (3, 16, 16))
        x, y = _t(12, 4, 3, 16, 16), torch.randint(0, 5, (4,))
        assert set(d(x, y, epoch=1)) == {name}
        assert set(d(x, y, epoch=2)) == {"ce"}  # main stage: the task loss (beta 0, as in the papers)
    same = Distiller(copy.deepcopy(t), [create_method("fsp")], [t], (3, 16, 16)).eval()
    assert same(x, y, epoch=0)["fsp"] < 1e-10


def test_svd_helpers_by_hand():
    from kdkit.losses import align_singular_vectors, svd_rbf, top_singular_vectors

    f = _t(20, 2, 3, 2, 2)
    v, s = top_singular_vectors(f, 2)
    assert v.shape == (2, 2, 4) and s.shape == (2, 2)
    m = f[0].double().flatten(1)  # [C, HW]
    # right singular vectors: eigenvectors of M^T M with eigenvalues s^2
    torch.testing.assert_close(m.t() @ m @ v[0, 0], s[0, 0] ** 2 * v[0, 0])
    e = torch.eye(3).unsqueeze(0)  # student candidates e0, e1, e2
    t = torch.tensor([[[0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(align_singular_vectors(e, t), t)  # picks e1 with flipped sign, then e2
    a, b = _t(21, 1, 2, 3), _t(22, 1, 2, 3)
    g = svd_rbf(a, b)
    assert g[0, 1, 0].item() == pytest.approx(math.exp(-((a[0, 1] - b[0, 0]) ** 2).sum().item() / 8), rel=1e-6)


def test_kdsvd_zero_for_copy_and_needs_two_layers():
    from kdkit.errors import ConfigError

    t = create_model("resnet8", num_classes=5)
    d = Distiller(copy.deepcopy(t), [create_method("kdsvd")], [t], (3, 16, 16)).eval()
    assert d(_t(23, 4, 3, 16, 16), torch.randint(0, 5, (4,)))["kdsvd"] < 1e-10
    with pytest.raises(ConfigError, match="at least two layers"):
        Distiller(t, [create_method("kdsvd", student_layers=["layer3"], teacher_layers=["layer3"])], [t], (3, 16, 16))


def test_singular_vectors_have_finite_gradients_with_equal_singular_values():
    from kdkit.losses import top_singular_vectors

    base = torch.zeros(1, 4, 2, 2)
    base[0, 0, 0, 0] = base[0, 1, 0, 1] = base[0, 2, 1, 0] = 1.0  # three equal singular values
    f = (base + 1e-9 * _t(30, 1, 4, 2, 2)).requires_grad_()
    v, s = top_singular_vectors(f, 4)
    exact = torch.linalg.svd(f.detach().double().flatten(2), full_matrices=False)[2][:, :4]
    torch.testing.assert_close(v[:, :2].abs(), exact[:, :2].abs())  # same vectors (up to sign) where s > 0
    v.sum().backward()
    assert torch.isfinite(f.grad).all()
