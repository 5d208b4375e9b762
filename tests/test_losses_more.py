"""DKD, DIST and the relation losses against computations written out independently here."""

import math

import pytest
import torch

from kdkit.losses import (
    correlation_congruence,
    dist_loss,
    dkd_loss,
    kd_loss,
    pkt_loss,
    rbf_taylor_correlation,
    rkd_angle,
    rkd_distance,
    similarity_preserving,
    soft_targets,
)


def _t(seed, *shape, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_dkd_by_hand_and_zero_when_equal():
    zs, zt, y, T = _t(0, 3, 4, scale=2), _t(1, 3, 4, scale=2), torch.tensor([0, 2, 3]), 2.0
    tckd = nckd = 0.0
    for b in range(3):
        ps, pt = _softmax(zs[b].tolist(), T), _softmax(zt[b].tolist(), T)
        g = y[b].item()
        tckd += _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        ps_nt = [p / (1 - ps[g]) for i, p in enumerate(ps) if i != g]
        pt_nt = [p / (1 - pt[g]) for i, p in enumerate(pt) if i != g]
        nckd += _kl(pt_nt, ps_nt)
    expected = T * T * (1.0 * tckd / 3 + 8.0 * nckd / 3)
    assert dkd_loss(zs, zt, y, T, 1.0, 8.0).item() == pytest.approx(expected, rel=1e-4)
    assert dkd_loss(zt, zt, y, T, 1.0, 8.0).abs() < 1e-5


def test_dkd_with_alpha_equal_beta_relates_to_kd():
    # paper eq. (5): KD = TCKD + (1 - p_t^target) NCKD; with a one-hot-like teacher p_t^target -> 1
    zs, y, T = _t(2, 4, 6), torch.tensor([1, 0, 5, 2]), 1.0
    zt = torch.full((4, 6), -20.0)
    zt[torch.arange(4), y] = 20.0
    kd = kd_loss(zs, soft_targets([zt], T), T)
    torch.testing.assert_close(dkd_loss(zs, zt, y, T, 1.0, 0.0), kd, rtol=1e-3, atol=1e-4)


def test_dist_by_hand():
    zs, zt, T = _t(3, 4, 5), _t(4, 4, 5), 2.0
    ys = [_softmax(r, T) for r in zs.tolist()]
    yt = [_softmax(r, T) for r in zt.tolist()]

    def pearson(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))

    inter = 1 - sum(pearson(a, b) for a, b in zip(ys, yt)) / 4
    cols_s, cols_t = list(zip(*ys)), list(zip(*yt))
    intra = 1 - sum(pearson(a, b) for a, b in zip(cols_s, cols_t)) / 5
    assert dist_loss(zs, zt, T, 2.0, 3.0).item() == pytest.approx(T * T * (2 * inter + 3 * intra), rel=1e-4)
    assert dist_loss(zt, zt, T, 1.0, 1.0).abs() < 1e-5
    # invariant to a positive affine change of the student's probabilities is the point of DIST:
    # a student whose logits are the teacher's plus a constant per sample matches exactly
    assert dist_loss(zt + 3.0, zt, T, 1.0, 1.0).abs() < 1e-5


def test_similarity_preserving_by_hand():
    fs, ft = _t(5, 3, 2, 2, 2), _t(6, 3, 4, 1, 1)

    def g(f):
        q = f.reshape(3, -1).tolist()
        m = [[sum(a * b for a, b in zip(qi, qj)) for qj in q] for qi in q]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in m]

    gs, gt = g(fs), g(ft)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert similarity_preserving(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    assert similarity_preserving(ft * 5, ft) < 1e-10  # scale-free


def _huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_rkd_by_hand():
    es, et = _t(7, 4, 3), _t(8, 4, 5)

    def dists(e):
        rows = e.tolist()
        d = [[math.dist(a, b) for b in rows] for a in rows]
        nz = [v for r in d for v in r if v > 0]
        mu = sum(nz) / len(nz)
        return [[v / mu for v in r] for r in d]

    ds, dt = dists(es), dists(et)
    expected = sum(_huber(ds[i][j], dt[i][j]) for i in range(4) for j in range(4)) / 16
    assert rkd_distance(es, et).item() == pytest.approx(expected, rel=1e-5)

    def angles(e):
        r = e.tolist()
        out = []
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    u = [a - b for a, b in zip(r[j], r[i])]
                    v = [a - b for a, b in zip(r[k], r[i])]
                    nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
                    out.append(0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv))
        return out

    expected = sum(_huber(a, b) for a, b in zip(angles(es), angles(et))) / 64
    assert rkd_angle(es, et).item() == pytest.approx(expected, rel=1e-4)
    # invariant to scaling and rotation of the embedding
    q, _ = torch.linalg.qr(_t(9, 3, 3))
    assert rkd_distance(es * 3 @ q, es) < 1e-10 and rkd_angle(es @ q, es) < 1e-10


def test_pkt_by_hand():
    fs, ft = _t(10, 3, 4), _t(11, 3, 6)

    def cond(f):
        r = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in f.tolist()]
        k = [[(sum(a * b for a, b in zip(ri, rj)) + 1) / 2 for rj in r] for ri in r]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = cond(fs), cond(ft)
    expected = sum(pt[i][j] * math.log((pt[i][j] + 1e-7) / (ps[i][j] + 1e-7)) for i in range(3) for j in range(3)) / 9
    assert pkt_loss(fs, ft).item() == pytest.approx(expected, rel=1e-4)
    assert pkt_loss(ft, ft).abs() < 1e-7


def test_correlation_congruence_taylor_kernel():
    e = _t(12, 5, 8)
    en = torch.nn.functional.normalize(e, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(en, en).pow(2))
    torch.testing.assert_close(rbf_taylor_correlation(e, 0.4, order=12), exact, rtol=1e-4, atol=1e-5)
    c2 = rbf_taylor_correlation(e, 0.4, 2)
    dot = en @ en.t()
    torch.testing.assert_close(c2, math.exp(-0.8) * (1 + 0.8 * dot + 0.32 * dot * dot))
    other = _t(13, 5, 3)
    expected = (c2 - rbf_taylor_correlation(other, 0.4, 2)).pow(2).sum() / 25
    torch.testing.assert_close(correlation_congruence(e, other), expected)
    assert correlation_congruence(e, e) < 1e-10


@pytest.mark.parametrize("fn", [similarity_preserving, rkd_distance, rkd_angle, pkt_loss, correlation_congruence])
def test_relation_gradients_reach_student_only(fn):
    fs = _t(14, 6, 4).requires_grad_()
    ft = _t(15, 6, 7).requires_grad_()
    fn(fs, ft).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None
