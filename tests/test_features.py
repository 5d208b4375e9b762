import pytest
import torch
from torch import nn

from kdkit.errors import LayerPathError
from kdkit.features import FeatureTap, format_inspect, probe, unwrap
from kdkit.models import create_model


def test_tap_captures_outputs_and_inputs():
    m = create_model("resnet8", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(m, ["layer2", "fc:input", "layer3.0.conv1"]) as tap:
        out = m(x)
    assert tap["layer2"].shape == (2, 32, 16, 16)
    assert tap["fc:input"].shape == (2, 64)
    assert tap["layer3.0.conv1"].shape == (2, 64, 8, 8)
    # the captured fc input really is what fc saw
    torch.testing.assert_close(m.fc(tap["fc:input"]), out)


def test_tap_hooks_removed_after_with_block_and_on_error():
    m = create_model("resnet8")
    with FeatureTap(m, ["layer1", "layer3"]):
        assert len(m.layer1._forward_hooks) == 1
    assert len(m.layer1._forward_hooks) == 0 and len(m.layer3._forward_hooks) == 0
    with pytest.raises(RuntimeError):
        with FeatureTap(m, ["layer1"]):
            m(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert len(m.layer1._forward_hooks) == 0


def test_tap_features_carry_gradients():
    m = create_model("cnn_tiny", in_channels=1)
    with FeatureTap(m, ["stage2"]) as tap:
        m(torch.randn(2, 1, 8, 8))
    tap["stage2"].sum().backward()
    assert m.stage1[0].weight.grad is not None and m.stage1[0].weight.grad.abs().sum() > 0


def test_unknown_path_suggests_close_ones():
    m = create_model("resnet8")
    with pytest.raises(LayerPathError, match="layer2") as e:
        FeatureTap(m, ["layr2"])
    assert "kdkit inspect" in str(e.value)
    with pytest.raises(LayerPathError, match="'input' or 'output'"):
        FeatureTap(m, ["layer2:middle"])


def test_tap_through_ddp_style_wrapper_and_compile():
    m = create_model("cnn_tiny", in_channels=1)
    compiled = torch.compile(m, backend="eager")
    assert unwrap(compiled) is m
    x = torch.randn(2, 1, 8, 8)
    for path in ("stage2", "_orig_mod.stage2"):
        with FeatureTap(compiled, [path]) as tap:
            compiled(x)
        assert tap[path].shape == (2, 16, 4, 4)
    assert len(m.stage2._forward_hooks) == 0


def test_tap_through_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        m = create_model("cnn_tiny", in_channels=1)
        ddp = nn.parallel.DistributedDataParallel(m)
        assert unwrap(ddp) is m
        with FeatureTap(ddp, ["module.stage3", "stage1"]) as tap:
            ddp(torch.randn(2, 1, 8, 8))
        assert tap["module.stage3"].shape == (2, 32, 2, 2) and tap["stage1"].shape == (2, 8, 8, 8)
    finally:
        dist.destroy_process_group()


def test_probe_shapes_stages_and_mode_restored():
    m = create_model("resnet20")
    m.train()
    info = probe(m, (3, 32, 32))
    assert m.training
    assert info.shape("layer1") == (16, 32, 32) and info.shape("layer3") == (64, 8, 8)
    assert info.stages() == ["layer1", "layer2", "layer3"]
    assert probe(create_model("vgg8"), (3, 32, 32)).stages() == ["block0", "block1", "block2", "block3", "block4"]
    assert probe(create_model("wrn_16_2"), (3, 32, 32)).stages() == ["block1", "block2", "relu"]
    text = format_inspect(m, info)
    assert "layer3.2.conv2" in text and "64x8x8" in text and "stages (default feature layers)" in text


def test_input_capture_of_inplace_relu_is_the_preactivation():
    m = create_model("resnet8").eval()
    info = probe(m, (3, 32, 32))
    assert [info.preactivation(p) for p in info.stages()] == [
        "layer1.0.relu:input", "layer2.0.relu:input", "layer3.0.relu:input"]
    wrn = probe(create_model("wrn_16_2"), (3, 32, 32))
    assert [wrn.preactivation(p) for p in wrn.stages()] == ["block1", "block2", "relu:input"]
    with FeatureTap(m, ["layer3.0.relu:input", "layer3"]) as tap:
        m(torch.randn(4, 3, 32, 32))
    pre = tap["layer3.0.relu:input"]
    assert (pre < 0).any()  # not overwritten by the in-place ReLU
    torch.testing.assert_close(pre.clamp_min(0), tap["layer3"])
