"""The weight_share transform (Deep Compression, Han et al. 2016): 1-D k-means against its definition at a
realistic layer size, the palette's gradient as the sum of its weights' gradients, a shared network
recovered by KD that resumes bit for bit, stores indices and a palette, and exports plain weights to ONNX,
the sizes, and the bad inputs."""

import pytest
import torch
import yaml
from conftest import killed_and_resumed
from torch import nn

from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.models import create_model
from kdkit.weight_share import SharedWeights, WeightShare, kmeans_1d, plain, shared_size


def test_kmeans_is_lloyds_fixed_point_from_a_linear_start():
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * 0.1
    v = w.flatten()
    for iters in (1, 2, 1000):
        centroids, assign = kmeans_1d(w, 16, iters=iters)
        assert torch.equal(assign, (v[:, None] - centroids[None, :]).abs().argmin(1))  # each value at its nearest
        assert torch.all(centroids[1:] >= centroids[:-1])
    # converged: each centroid is the mean of its values (a fixed point of Lloyd's iteration)
    for k in range(16):
        members = v[assign == k]
        assert len(members) and torch.allclose(centroids[k], members.mean(), atol=1e-6)
    one, _ = kmeans_1d(w, 16, iters=1)  # one step from the linear initialisation
    start = torch.linspace(float(v.min()), float(v.max()), 16)
    first = (v[:, None] - start[None, :]).abs().argmin(1)
    used = first.unique()
    torch.testing.assert_close(one[used], torch.stack([v[first == k].mean() for k in used]))


def test_the_palette_gradient_is_the_sum_over_its_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    shared = SharedWeights(conv, bits=4)
    plain_conv = nn.Conv2d(16, 32, 3, padding=1)
    with torch.no_grad():
        plain_conv.weight.copy_(shared.weight), plain_conv.bias.copy_(conv.bias)
    x = torch.randn(64, 16, 32, 32)
    torch.testing.assert_close(shared(x), plain_conv(x))
    g = torch.randn(64, 32, 32, 32)
    shared(x).backward(g)
    plain_conv(x).backward(g)
    idx = shared.indices.long().flatten()
    expected = torch.zeros(16).index_add_(0, idx, plain_conv.weight.grad.flatten())
    torch.testing.assert_close(shared.palette.grad, expected, rtol=1e-4, atol=1e-3)
    assert shared.indices.dtype == torch.uint8 and "weight" not in dict(shared.named_parameters())


def test_sizes_and_plain_copy():
    m = WeightShare(bits=3).apply(create_model("cnn_tiny", num_classes=10, in_channels=1))
    size = shared_size(m)
    weights = 8 * 9 + 8 * 8 * 9 + 16 * 8 * 9 + 16 * 16 * 9 + 32 * 16 * 9 + 32 * 32 * 9 + 32 * 10
    assert size["shared_weights"] == weights
    rest = sum(t.numel() for n, t in m.state_dict().items() if not n.endswith(("palette", "indices"))
               and t.is_floating_point())
    assert size["size_bits"] == 3 * weights + 32 * 8 * 7 + 32 * rest and size["size_bits_fp32"] == 32 * (weights + rest)
    x = torch.randn(4, 1, 28, 28)
    copy = plain(m.eval())
    assert copy is not m and torch.equal(copy(x), m(x))
    assert not any(isinstance(v, SharedWeights) for v in copy.modules())
    assert any(isinstance(v, SharedWeights) for v in m.modules())  # the original is left shared


def test_shared_network_recovered_by_kd_resumes_stores_a_palette_and_exports_plain(tmp_path, teacher_ckpt, capsys):
    share = [{"name": "weight_share", "bits": 3}]
    cfg = {"model": {"name": "cnn_small", "checkpoint": teacher_ckpt, "transforms": share},
           "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": "kd", "data": {"name": "digits"},
           "optim": {"lr": 0.01}, "train": {"epochs": 2, "progress": False, "seed": 0}}
    result = killed_and_resumed(cfg, tmp_path)
    assert result["test/top1"] > 80
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    weights = ckpt["distiller"]
    assert weights["student.stage1.0.indices"].dtype == torch.uint8 and weights["student.stage1.0.palette"].numel() == 8
    assert not any(k.startswith("student.") and k.endswith("conv.weight") for k in weights)
    # the indices are fixed by the clustering, the palette is what trained
    teacher = torch.load(teacher_ckpt, weights_only=True)["distiller"]
    start_plain = create_model("cnn_small", num_classes=10, in_channels=1)
    start_plain.load_state_dict({k.removeprefix("student."): v for k, v in teacher.items() if k.startswith("student.")})
    start = WeightShare(bits=3).apply(start_plain)
    assert torch.equal(start.stage1[0].indices, weights["student.stage1.0.indices"])
    assert not torch.equal(start.stage1[0].palette.detach(), weights["student.stage1.0.palette"])
    capsys.readouterr()
    assert cli(["export", str(tmp_path / "full" / "checkpoint.pt"), "--out", str(tmp_path / "s.onnx")]) == 0
    top1 = f"{result['test/top1']:.2f}"
    assert f"accuracy {top1} vs {top1}, top-1 agreement 100.00%" in capsys.readouterr().out
    import onnx

    assert not any("palette" in i.name for i in onnx.load(str(tmp_path / "s.onnx")).graph.initializer)


@pytest.mark.parametrize("entry, model, message", [
    ({"bits": 9}, None, "bits must be an integer from 1 to 8"),
    ({"bits": 0}, None, "bits must be an integer from 1 to 8"),
    ({"ignore": ["nope"]}, nn.Sequential(nn.Linear(4, 2)), "not a module of the network"),
    ({}, nn.Sequential(nn.ReLU()), "no convolution or linear layer"),
])
def test_bad_weight_share_inputs(entry, model, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        WeightShare(**entry).apply(model)


def test_bad_bits_in_a_config_is_one_line(tmp_path, capsys):
    cfg = {"model": {"name": "cnn_tiny", "transforms": [{"name": "weight_share", "bits": 12}]},
           "data": {"name": "digits"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bits must be an integer from 1 to 8" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("order", [["weight_share", "qat"], ["qat", "weight_share"], ["binarize", "weight_share"],
                                   ["weight_share", "binarize"], ["binarize", "qat"],
                                   ["weight_share", {"name": "prune", "ratio": 0.3}],
                                   ["qat", {"name": "lowrank", "ratio": 0.5}],
                                   ["binarize", {"name": "sparsify", "ratio": 0.5}]])
def test_a_layer_transform_after_one_that_wrapped_the_layers_is_refused_in_one_line(order):
    from kdkit.transforms import apply_transforms, transform_config

    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match=r"cannot follow (weight_share|qat|binarize), which has rewritten"):
        apply_transforms(model, [transform_config(t) for t in order], (1, 8, 8))


def test_pruning_then_sharing_composes():
    from kdkit.transforms import apply_transforms, transform_config

    model = create_model("cnn_small", num_classes=10, in_channels=1)
    shared = apply_transforms(model, [transform_config({"name": "prune", "ratio": 0.3}),
                                      transform_config({"name": "weight_share", "bits": 3})], (1, 8, 8))
    layers = [m for m in shared.modules() if isinstance(m, SharedWeights)]
    assert layers and all(m.palette.numel() == 8 for m in layers)
    assert shared(torch.rand(4, 1, 8, 8)).shape == (4, 10)
