"""Structured pruning (Torch-Pruning): ratio 0 is the identity, a 50% MAC target is met with the classifier
kept, the recorded layer shapes rebuild the pruned network exactly, a pruned run saves and reloads without
pickle and resumes bit-identically, and bad input is refused clearly."""

import copy

import pytest
import torch
import yaml
from conftest import killed_and_resumed

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import ConfigError
from kdkit.export import count_macs
from kdkit.models import create_model
from kdkit.prune import layer_shapes, resize_layers, structured_prune


def test_ratio_zero_is_the_identity():
    torch.manual_seed(0)
    m = create_model("resnet8", num_classes=10)
    before = copy.deepcopy(m.state_dict())
    stats = structured_prune(m, (3, 16, 16), 0.0)
    assert stats["macs_after"] == stats["macs_before"]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and before.keys() == m.state_dict().keys()


@pytest.mark.parametrize("name", ["cnn_small", "resnet8", "wrn_16_2", "mobilenetv2"])
def test_half_the_macs_removed_and_the_structure_rebuilds_exactly(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10)
    base = count_macs(m, (3, 32, 32))
    structured_prune(m, (3, 32, 32), 0.5, importance="l1")
    assert count_macs(m, (3, 32, 32)) <= 0.5 * base
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # the classifier keeps its outputs
    fresh = resize_layers(create_model(name, num_classes=10), layer_shapes(m))
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(8, 3, 32, 32)
    m.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(m(x), fresh(x))


def test_channel_counts_stay_multiples_of_round_to():
    torch.manual_seed(0)
    m = create_model("resnet8", num_classes=10)
    structured_prune(m, (3, 16, 16), 0.5)  # round_to=8 by default
    counts = [v["out_channels"] for v in layer_shapes(m).values() if "out_channels" in v]
    assert counts and all(c % 8 == 0 for c in counts) and min(counts) < 16


def test_pruning_keeps_the_most_important_filters():
    """Every parameter coupled to the first layer's channels (its filters, the batch norm's scale and
    shift, the next convolution's input slices) is made larger for a higher channel index, so under any
    reduction over the group the L2 ranking is the index: the kept filters must be the last ones."""
    torch.manual_seed(0)
    m = create_model("cnn_small", num_classes=10)
    conv, bn, nxt = m.stage1[0], m.stage1[1], m.stage1[3]
    rank = torch.arange(16, dtype=torch.float32) + 1
    with torch.no_grad():
        conv.weight.copy_(rank.view(-1, 1, 1, 1) * conv.weight / conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        bn.weight.copy_(rank)
        bn.bias.copy_(rank)
        nxt.weight.copy_(rank.view(1, -1, 1, 1) * nxt.weight / nxt.weight.transpose(0, 1).flatten(1).norm(dim=1)
                         .view(1, -1, 1, 1))
    original = conv.weight.detach().clone()
    structured_prune(m, (3, 16, 16), 0.5, importance="l2")
    n = m.stage1[0].out_channels
    assert 0 < n < 16
    kept = sorted(int((original == w).flatten(1).all(1).nonzero()[0]) for w in m.stage1[0].weight.detach())
    assert kept == list(range(16 - n, 16))


def _cfg(tmp_path, ckpt, **prune):
    return {"model": {"name": "cnn_small", "checkpoint": ckpt,
                      "transforms": [{"name": "prune", "ratio": 0.5, **prune}]},
            "teacher": {"name": "cnn_small", "checkpoint": ckpt}, "method": "kd", "data": {"name": "digits"},
            "train": {"epochs": 2, "progress": False, "seed": 0}}


def test_a_pruned_run_reloads_without_pickle_and_resumes(tmp_path, teacher_ckpt, capsys):
    result = killed_and_resumed(_cfg(tmp_path, teacher_ckpt), tmp_path)
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoint.pt")  # weights_only=True inside
    layers = ckpt["model"]["transforms"][0]["structure"]["layers"]
    assert layers["stage1.0"]["out_channels"] < 16 and layers["fc"]["out_features"] == 10
    capsys.readouterr()
    assert cli(["eval", str(tmp_path / "full" / "checkpoint.pt"), "--json"]) == 0
    assert float(yaml.safe_load(capsys.readouterr().out.splitlines()[-1])["top1"]) == pytest.approx(result["test/top1"])


def test_a_tampered_structure_is_a_checkpoint_error(tmp_path, teacher_ckpt, capsys):
    cfg = {**_cfg(tmp_path, teacher_ckpt), "train": {"epochs": 1, "progress": False}}
    from_config(load_config(base=cfg), run_dir=tmp_path / "r", log=lambda m: None).fit()
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ckpt["model"]["transforms"][0]["structure"]["layers"]["stage9"] = {"num_features": 3}
    torch.save(ckpt, tmp_path / "bad.pt")
    capsys.readouterr()
    assert cli(["eval", str(tmp_path / "bad.pt")]) == 4
    err = capsys.readouterr().err
    assert "cannot be rebuilt" in err and "stage9" in err and "Traceback" not in err


@pytest.mark.parametrize("prune,message", [
    ({"ratio": 0.0}, "ratio must be in (0, 1)"),
    ({"ratio": 1.0}, "ratio must be in (0, 1)"),
    ({"ignore": ["stage9"]}, "no module 'stage9' to keep whole"),
    ({"importance": "taylor"}, "importance"),
])
def test_bad_pruning_requests_are_refused(prune, message, tmp_path, teacher_ckpt, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(tmp_path, teacher_ckpt, **prune)))
    assert cli(["distill", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_torch_pruning_cannot_trace_is_a_clear_error():
    with pytest.raises(ConfigError, match="Torch-Pruning cannot prune this model"):
        structured_prune(create_model("shufflenetv2", num_classes=10), (3, 32, 32), 0.5)


def test_sparsify_masks_hold_through_training_and_reload(tmp_path, teacher_ckpt, capsys):
    from kdkit.export import checkpoint_network, export_onnx, predict_onnx
    from kdkit.prune import Sparsify, sparsity

    torch.manual_seed(0)
    m = create_model("cnn_small", num_classes=10)
    Sparsify(ratio=0.6).apply(m)
    assert sparsity(m) == pytest.approx(0.6, abs=0.01)
    per_layer = create_model("cnn_small", num_classes=10)
    Sparsify(ratio=0.3, scope="layer").apply(per_layer)
    assert all(float((mod.weight == 0).float().mean()) == pytest.approx(0.3, abs=0.02)
               for mod in per_layer.modules() if hasattr(mod, "weight_mask"))

    cfg = {**_cfg(tmp_path, teacher_ckpt)}
    cfg["model"] = {**cfg["model"], "transforms": [{"name": "sparsify", "ratio": 0.6}]}
    result = killed_and_resumed(cfg, tmp_path)  # the masks are state: resuming keeps them exactly
    model, _, loaders = checkpoint_network(tmp_path / "full" / "checkpoint.pt")
    assert sparsity(model) >= 0.6 - 1e-3  # pruned weights stayed zero through two epochs of KD
    assert not any(hasattr(mod, "weight_mask") for mod in model.modules())  # made permanent for inference
    capsys.readouterr()
    assert cli(["eval", str(tmp_path / "full" / "checkpoint.pt"), "--json"]) == 0
    assert float(yaml.safe_load(capsys.readouterr().out.splitlines()[-1])["top1"]) == pytest.approx(result["test/top1"])
    x, _, _ = next(iter(loaders.test))
    path = export_onnx(model, tuple(loaders.input_shape), tmp_path / "s.onnx")
    with torch.no_grad():
        torch.testing.assert_close(predict_onnx(path, x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sparsify,message", [
    ({"ratio": 1.0}, "ratio must be in (0, 1)"),
    ({"ignore": ["fc9"]}, "no module 'fc9' to leave dense"),
    ({"scope": "net"}, "scope"),
])
def test_bad_sparsify_requests_are_refused(sparsify, message, tmp_path, teacher_ckpt, capsys):
    cfg = _cfg(tmp_path, teacher_ckpt)
    cfg["model"] = {**cfg["model"], "transforms": [{"name": "sparsify", **sparsify}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["distill", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
