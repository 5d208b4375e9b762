"""Each loss: zero when student equals teacher, gradient to the student only, value equal to an
independent computation written out here."""

import math

import pytest
import torch

from kdkit.losses import attention_map, attention_transfer, hint_loss, kd_loss, logit_mse, soft_targets


def _logits(seed, b=4, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3


def test_kd_loss_zero_when_equal_and_matches_hand_computation():
    z = _logits(0)
    assert kd_loss(z, soft_targets([z], 4.0), 4.0).abs() < 1e-6
    zs, zt, T = _logits(1), _logits(2), 3.0
    expected = 0.0
    for b in range(4):
        ps = [math.exp(v / T) for v in zs[b].tolist()]
        pt = [math.exp(v / T) for v in zt[b].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        expected += sum(t * math.log(t / s) for s, t in zip(ps, pt))
    expected = expected / 4 * T * T
    assert kd_loss(zs, soft_targets([zt], T), T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_gradient_reaches_student_only():
    zs = _logits(1).requires_grad_()
    zt = _logits(2).requires_grad_()
    kd_loss(zs, soft_targets([zt], 4.0), 4.0).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_kd_batch_size_invariant():
    zs, zt = _logits(1), _logits(2)
    a = kd_loss(zs, soft_targets([zt], 2.0), 2.0)
    b = kd_loss(torch.cat([zs, zs]), soft_targets([torch.cat([zt, zt])], 2.0), 2.0)
    torch.testing.assert_close(a, b)


def test_ensemble_soft_targets():
    z1, z2, T = _logits(3), _logits(4), 2.0
    probs = soft_targets([z1, z2], T, "probs")
    torch.testing.assert_close(probs, (torch.softmax(z1 / T, 1) + torch.softmax(z2 / T, 1)) / 2)
    torch.testing.assert_close(soft_targets([z1, z2], T, "logits"), torch.softmax((z1 + z2) / 2 / T, 1))
    with pytest.raises(ValueError):
        soft_targets([z1], T, "median")


def test_logit_mse():
    zs, zt = _logits(1), _logits(2)
    assert logit_mse(zt, zt) == 0
    expected = sum((a - b) ** 2 for a, b in zip(zs.flatten().tolist(), zt.flatten().tolist())) / zs.numel()
    assert logit_mse(zs, zt).item() == pytest.approx(expected, rel=1e-5)


def test_hint_loss_and_gradient():
    fs = torch.randn(2, 3, 4, 4, requires_grad=True)
    ft = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert hint_loss(ft, ft) == 0
    loss = hint_loss(fs, ft)
    assert loss.item() == pytest.approx(((fs - ft) ** 2).mean().item(), rel=1e-6)
    loss.backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None


def test_attention_map_by_hand():
    f = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # [1, 2 channels, 1, 2]
    # sum over channels of a^2: position0 1+9=10, position1 4+0=4 ; mean /2 -> 5, 2 ; normalised
    q = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    torch.testing.assert_close(attention_map(f), torch.tensor([q]))


def test_attention_transfer_zero_grad_and_value():
    ft = torch.randn(3, 8, 4, 4)
    assert attention_transfer(ft, ft) < 1e-10
    # channel count may differ: same spatial attention means zero loss
    assert attention_transfer(torch.cat([ft, ft], 1), ft) < 1e-10
    fs = torch.randn(3, 5, 4, 4, requires_grad=True)
    ft.requires_grad_()
    loss = attention_transfer(fs, ft)
    qs = fs.detach().pow(2).sum(1).flatten(1)
    qt = ft.detach().pow(2).sum(1).flatten(1)
    qs, qt = qs / qs.norm(dim=1, keepdim=True), qt / qt.norm(dim=1, keepdim=True)
    assert loss.item() == pytest.approx(((qs - qt) ** 2).mean().item(), rel=1e-5)
    loss.backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None


def test_attention_transfer_pools_larger_map():
    fs, ft = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    pooled = torch.nn.functional.adaptive_avg_pool2d(fs, 4)
    torch.testing.assert_close(attention_transfer(fs, ft), attention_transfer(pooled, ft))
