"""The binarize transform (ReActNet, Liu et al. 2020): binary forward values against the arithmetic written
out, the straight-through gradients (Bi-Real Net's sign approximation, the clipped identity for weights) at
a realistic size, the two-step schedule as a pipeline on digits (step 2 from step 1's checkpoint, no double
wrapping), the checkpoint and ONNX round trips, the theoretical costs, and the bad inputs."""

import json

import onnx
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kdkit.binarize import Binarize, BinaryLayer, binary_costs, binary_sign, binary_weight
from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.models import create_model


def test_binary_forward_is_sign_arithmetic():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    layer = BinaryLayer(conv).eval()
    with torch.no_grad():
        layer.shift.copy_(torch.randn(16) * 0.1)
    x = torch.randn(64, 16, 32, 32)
    scale = conv.weight.abs().mean(dim=(1, 2, 3))
    by_hand = F.conv2d(torch.sign(x + layer.shift.view(1, -1, 1, 1)), torch.sign(conv.weight), padding=1)
    torch.testing.assert_close(layer(x), by_hand * scale.view(1, -1, 1, 1), rtol=1e-5, atol=1e-4)
    lin = BinaryLayer(nn.Linear(256, 10), weights=False).eval()  # step 1: binary inputs, real weights
    v = torch.randn(128, 256)
    torch.testing.assert_close(lin(v), F.linear(torch.sign(v), lin.layer.weight, lin.layer.bias))


def test_straight_through_gradients_at_a_realistic_size():
    torch.manual_seed(0)
    x = (torch.randn(64, 32, 16, 16) * 1.5).requires_grad_()
    g = torch.randn_like(x)
    binary_sign(x).backward(g)
    a = x.detach().abs()
    expected = g * torch.where(a < 1, 2 - 2 * a, torch.zeros_like(a))  # Bi-Real: 2 + 2x below 0, 2 - 2x above
    torch.testing.assert_close(x.grad, expected)
    w = (torch.randn(64, 32, 3, 3) * 0.8).requires_grad_()
    gw = torch.randn(64, 32, 3, 3)
    out = binary_weight(w)
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out.detach(), scale * torch.sign(w.detach()))
    out.backward(gw)
    torch.testing.assert_close(w.grad, gw * (w.detach().abs() <= 1))  # the clipped identity


def test_the_first_and_last_layers_stay_and_step_two_resets_settings():
    m = create_model("cnn_tiny", num_classes=10, in_channels=1)
    t = Binarize(weights=False)
    m = t.apply(m)
    binary = {n: mod for n, mod in m.named_modules() if isinstance(mod, BinaryLayer)}
    assert list(binary) == ["stage1.3", "stage2.0", "stage2.3", "stage3.0", "stage3.3"]
    assert isinstance(m.stage1[0], nn.Conv2d) and isinstance(m.fc, nn.Linear)
    assert t.structure(m) == {"layers": list(binary)} and not any(b.weights for b in binary.values())
    m = Binarize(weights=True, keep=["stage3.3"]).apply(m)  # step 2 on the step-1 network: settings, no rewrap
    assert not any(isinstance(mod.layer, BinaryLayer) for mod in m.modules() if isinstance(mod, BinaryLayer))
    assert [mod.weights for n, mod in m.named_modules() if isinstance(mod, BinaryLayer)] == [True] * 4 + [False]


def test_theoretical_costs_of_cnn_tiny():
    plain = create_model("cnn_tiny", num_classes=10, in_channels=1)
    m = Binarize().apply(create_model("cnn_tiny", num_classes=10, in_channels=1))
    x = torch.randn(2, 1, 28, 28)
    full, binary = binary_costs(plain, x), binary_costs(m, x)
    # by hand: 3x3 convs 1->8 and 8->8 at 28x28, 8->16 (stride 2) and 16->16 at 14x14, 16->32 and 32->32 at
    # 7x7, then fc 32->10
    macs = [28 * 28 * 8 * 9 * 1, 28 * 28 * 8 * 9 * 8, 14 * 14 * 16 * 9 * 8, 14 * 14 * 16 * 9 * 16,
            7 * 7 * 32 * 9 * 16, 7 * 7 * 32 * 9 * 32, 32 * 10]
    assert full["macs"] == binary["macs"] == sum(macs) and full["bops"] == 0
    assert binary["bops"] == sum(macs[1:6]) and binary["ops"] == macs[0] + macs[6] + sum(macs[1:6]) / 64
    one_bit = 8 * 8 * 9 + 16 * 8 * 9 + 16 * 16 * 9 + 32 * 16 * 9 + 32 * 32 * 9
    assert binary["binary_weights"] == one_bit and binary["size_bits"] == 32 * (binary["params"] - one_bit) + one_bit
    assert binary["params"] == full["params"] + 8 + 8 + 16 + 16 + 32  # one shift per binary layer's input channel
    # the figures docs/compression.md quotes
    assert (binary["macs"], binary["bops"], binary["ops"]) == (1863104, 1806336, 84992)
    assert (binary["size_bits"], binary["size_bits_fp32"]) == (40448, 593984)


def test_two_step_pipeline_with_kd_round_trips_through_checkpoint_and_onnx(tmp_path, capsys):
    """ReActNet's schedule on digits: a full-precision teacher, step 1 (binary activations) from scratch by KD,
    step 2 (binary weights too) from step 1's weights; the step-2 checkpoint rebuilt and
    exported to ONNX (Sign nodes) give its test accuracy."""
    base = {"data": {"name": "digits"}, "optim": {"name": "adamw", "lr": 0.005, "weight_decay": 0.0},
            "train": {"epochs": 2, "seed": 0, "progress": False}}
    kd = {"name": "kd", "alpha": 1.0, "temperature": 1.0}
    runs = [{"name": "teacher", "config": {**base, "model": "cnn_small"}},
            {"name": "step1", "config": {**base, "model": {"name": "cnn_small", "transforms": [
                {"name": "binarize", "weights": False}]}, "method": kd}, "teacher": {"from": "teacher"}},
            {"name": "step2", "config": {**base, "model": {"name": "cnn_small", "transforms": ["binarize"]},
                                         "method": kd}, "init": {"from": "step1"}, "teacher": {"from": "teacher"}}]
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "runs": runs}))
    assert cli(["pipeline", str(path)]) == 0
    root = tmp_path / "runs"
    step1 = torch.load(root / "step1" / "checkpoint.pt", weights_only=True)
    step2 = torch.load(root / "step2" / "checkpoint.pt", weights_only=True)
    (rec1,), (rec2,) = step1["model"]["transforms"], step2["model"]["transforms"]
    assert rec1["weights"] is False and rec2["weights"] is True and rec1["structure"] == rec2["structure"]
    final = json.loads((root / "step2" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test/top1"] > 30  # two epochs of a binary network on digits: far above chance (10%)
    capsys.readouterr()  # the checkpoint rebuilt by `kdkit export` gives the run's test accuracy, and so does ONNX
    assert cli(["export", str(root / "step2" / "checkpoint.pt"), "--out", str(tmp_path / "b.onnx")]) == 0
    out = capsys.readouterr().out
    top1 = f"{final['test/top1']:.2f}"
    assert f"accuracy {top1} vs {top1}, top-1 agreement 100.00%" in out, out
    assert "Sign" in {n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node}

@pytest.mark.parametrize("model, entry, message", [
    (nn.Sequential(nn.ReLU()), {}, "has no convolution or linear layer"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), {}, "nothing to binarize"),
    (nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)), {"keep": ["9"]}, "not a module"),
])
def test_bad_binarize_inputs(model, entry, message):
    with pytest.raises(ConfigError, match=message):
        Binarize(**entry).apply(model)


def test_binarize_with_nothing_on_is_refused(tmp_path, capsys):
    cfg = {"model": {"name": "cnn_tiny", "transforms": [{"name": "binarize", "activations": False, "weights": False}]},
           "data": {"name": "digits"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "neither activations nor weights" in err and len(err.strip().splitlines()) == 1
