"""Dense distillation losses against their reference computations, written out here, at the sizes of the
issue: batch 8, 64x64 maps, 11 classes (and CIFAR-sized feature maps)."""

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.dense import (
    channel_wise_divergence,
    gradient_penalty,
    pair_similarity,
    pairwise_distillation,
    pixel_kd,
)


def _maps(b=8, c=11, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g) * 3, torch.randn(b, c, h, w, generator=g) * 3


def test_pixel_kd_is_the_skd_criterion():
    """SKD's CriterionPixelWise: pixels as rows, -sum(softmax(t) * log_softmax(s)) / W / H."""
    s, t = _maps()
    n, c, w, h = s.shape
    rows_s = s.permute(0, 2, 3, 1).reshape(-1, c)
    rows_t = t.permute(0, 2, 3, 1).reshape(-1, c)
    ref = (-(F.softmax(rows_t, 1) * F.log_softmax(rows_s, 1)).sum()) / w / h
    assert float(pixel_kd(s, t)) == pytest.approx(float(ref), rel=1e-5)
    assert float(pixel_kd(s, t, reduction="mean")) == pytest.approx(float(ref) / n, rel=1e-5)
    # with a temperature: T^2 times the softened cross-entropy
    ref_t = (-(F.softmax(rows_t / 2, 1) * F.log_softmax(rows_s / 2, 1)).sum()) / w / h * 4
    assert float(pixel_kd(s, t, 2.0)) == pytest.approx(float(ref_t), rel=1e-5)


def test_pixel_kd_minimum_and_gradient():
    s, t = _maps(b=2, h=8, w=8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = pixel_kd(s, t)
    loss.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    p = F.softmax(t.detach(), 1)
    entropy = -(p * p.log()).sum() / 64
    assert float(pixel_kd(t.detach(), t.detach())) == pytest.approx(float(entropy), rel=1e-5)  # KL = 0


def _reference_pairwise(f_s, f_t, scale=0.5):
    """SKD's CriterionPairWiseforWholeFeatAfterPool with its sim_dis_compute, written out."""
    total_w, total_h = f_t.shape[2], f_t.shape[3]
    pw, ph = int(total_w * scale), int(total_h * scale)
    pool = torch.nn.MaxPool2d(kernel_size=(pw, ph), stride=(pw, ph), padding=0, ceil_mode=True)

    def sim(f):
        norm = ((f ** 2).sum(1) ** 0.5).reshape(f.shape[0], 1, f.shape[2], f.shape[3]) + 1e-8
        f = (f / norm).reshape(f.shape[0], f.shape[1], -1)
        return torch.bmm(f.transpose(1, 2), f)

    ps, pt = pool(f_s), pool(f_t)
    err = (sim(pt) - sim(ps)) ** 2 / ((pt.shape[-1] * pt.shape[-2]) ** 2) / pt.shape[0]
    return err.sum()


@pytest.mark.parametrize("scale, shape_s, shape_t", [(0.5, (8, 64, 16, 16), (8, 128, 16, 16)),
                                                     (0.25, (8, 32, 32, 32), (8, 64, 32, 32)),
                                                     (0.125, (64, 64, 8, 8), (64, 256, 8, 8))])
def test_pairwise_is_the_skd_criterion(scale, shape_s, shape_t):
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(*shape_s, generator=g), torch.randn(*shape_t, generator=g)
    assert float(pairwise_distillation(f_s, f_t, scale)) == pytest.approx(float(_reference_pairwise(f_s, f_t, scale)),
                                                                          rel=1e-4)


def test_pairwise_zero_for_the_same_graph_and_gradient_to_student_only():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(4, 16, 8, 8, generator=g)
    assert float(pairwise_distillation(f, f.clone())) == pytest.approx(0.0, abs=1e-10)
    assert float(pairwise_distillation(f, 3 * f)) == pytest.approx(0.0, abs=1e-10)  # scale-free
    f_s = torch.randn(4, 8, 8, 8, generator=g, requires_grad=True)
    f_t = f.clone().requires_grad_(True)
    pairwise_distillation(f_s, f_t).backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None
    a = pair_similarity(f)
    assert a.shape == (4, 64, 64) and torch.allclose(a.diagonal(dim1=1, dim2=2), torch.ones(4, 64), atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_is_mmrazor_channel_wise_divergence(tau):
    """MMRazor's ChannelWiseDivergence: channels as rows of HW positions, sum(p_t log p_t - p_t log p_s) *
    tau^2 / (C * N)."""
    s, t = _maps(seed=3)
    n, c, h, w = s.shape
    p_t = F.softmax(t.reshape(-1, w * h) / tau, dim=1)
    ref = torch.sum(p_t * F.log_softmax(t.reshape(-1, w * h) / tau, dim=1)
                    - p_t * F.log_softmax(s.reshape(-1, w * h) / tau, dim=1)) * tau ** 2 / (c * n)
    assert float(channel_wise_divergence(s, t, tau)) == pytest.approx(float(ref), rel=1e-4)
    assert float(channel_wise_divergence(t, t, tau)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_penalty_of_a_linear_critic():
    """A linear critic w.x has gradient w everywhere: the penalty is (||w|| - 1)^2."""
    w = torch.randn(1, 3, 4, 4)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake)
    assert float(gp) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)
