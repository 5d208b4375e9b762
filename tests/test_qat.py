"""Quantization-aware training: the fake quantization against int8 arithmetic written out, the
straight-through gradient, the tracked input range, and a QAT + KD run that resumes bit-identically and
deploys through `kdkit quantize`."""

import json

import pytest
import torch
import yaml
from conftest import killed_and_resumed
from torch import nn

from kdkit.cli import main as cli
from kdkit.qat import FakeQuantized, unwrap, wrap


def _int8_by_hand(x, w, b, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s_x = (hi - lo) / 255
    zp = max(-128, min(127, -128 - round(lo / s_x)))
    xq = ((torch.round(x / s_x) + zp).clamp(-128, 127) - zp) * s_x
    s_w = w.abs().amax(1, keepdim=True) / 127
    wq = torch.round(w / s_w).clamp(-128, 127) * s_w
    return xq, wq, xq @ wq.T + b


def test_fake_quantization_is_int8_arithmetic_and_its_gradient_passes_straight_through():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    q = FakeQuantized(lin).train()
    x = torch.randn(64, 12) * 3
    y = q(x)
    assert float(q.lo) == pytest.approx(float(x.min())) and float(q.hi) == pytest.approx(float(x.max()))
    xq, wq, expected = _int8_by_hand(x, lin.weight.detach(), lin.bias.detach(), float(x.min()), float(x.max()))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(lin.weight.grad, g.T @ xq, rtol=1e-4, atol=1e-4)  # d/dw through round = 1
    x2 = torch.randn(64, 12)
    q(x2)  # the range moves towards the new batch's by the momentum
    assert float(q.lo) == pytest.approx(0.9 * float(x.min()) + 0.1 * float(x2.min()), rel=1e-5)
    q.eval()
    lo = float(q.lo)
    q(torch.randn(64, 12) * 10)
    assert float(q.lo) == lo  # evaluation does not move it


def test_wrap_and_unwrap_every_layer():
    from kdkit.models import create_model

    m = create_model("resnet8", num_classes=10)
    layers = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)}
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    wrap(m)
    assert {n for n, mod in m.named_modules() if isinstance(mod, FakeQuantized)} == layers
    unwrap(m)
    assert not any(isinstance(mod, FakeQuantized) for mod in m.modules())
    assert all(torch.equal(weights[k], v) for k, v in m.state_dict().items())


def test_qat_with_kd_resumes_and_deploys_as_int8(tmp_path, teacher_ckpt, capsys):
    cfg = {"model": {"name": "cnn_small", "checkpoint": teacher_ckpt, "transforms": ["qat"]},
           "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": "kd", "data": {"name": "digits"},
           "optim": {"lr": 0.01}, "train": {"epochs": 2, "progress": False, "seed": 0}}
    result = killed_and_resumed(cfg, tmp_path)
    assert result["test/top1"] > 90
    capsys.readouterr()
    assert cli(["quantize", str(tmp_path / "full" / "checkpoint.pt"), "--out", str(tmp_path / "q.onnx")]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert r["int8_top1"] >= result["test/top1"] - 2.0 and r["agreement"] >= 97.0


def test_bad_qat_momentum_is_refused(tmp_path, teacher_ckpt, capsys):
    cfg = {"model": {"name": "cnn_small", "transforms": [{"name": "qat", "momentum": 0}]}, "data": {"name": "digits"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "momentum must be in (0, 1]" in capsys.readouterr().err
