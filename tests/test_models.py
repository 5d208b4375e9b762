import pytest
import torch

from kdkit.errors import RegistryError
from kdkit.models import count_params, create_model, list_models

# Published parameter counts (CRD, Tian et al. 2020, table 1/2, 100 classes; He et al. 2016 for resnet20
# on CIFAR-10), in millions, and the tolerance we accept.
PUBLISHED_100 = {
    "wrn_40_2": 2.25, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "resnet56": 0.86, "resnet110": 1.73,
    "resnet32": 0.47, "resnet32x4": 7.43, "resnet8x4": 1.23, "vgg13": 9.46, "vgg8": 3.96,
    "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.35,
}


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED_100.items()))
def test_parameter_counts_match_published(name, millions):
    n = count_params(create_model(name, num_classes=100)) / 1e6
    assert n == pytest.approx(millions, rel=0.02), f"{name}: {n:.3f}M"


def test_resnet20_cifar10_params():
    assert count_params(create_model("resnet20", num_classes=10)) / 1e6 == pytest.approx(0.27, abs=0.005)


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_shapes(name):
    if name.startswith("hf_"):  # a text model: in_channels is its vocabulary; token ids in, logits out
        pytest.importorskip("transformers")
        m = create_model(name, num_classes=7, in_channels=100, layers=1, hidden=32, heads=2).train()
        ids = torch.randint(0, 100, (2, 16))
        out = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert out.shape == (2, 7)
        out.sum().backward()
        assert all(p.grad is not None for p in m.parameters())
        return
    small = name.startswith(("cnn", "mlp"))
    c, hw = (1, 8) if small else (3, 32)
    m = create_model(name, num_classes=7, in_channels=c)
    m.train()
    out = m(torch.randn(2, c, hw, hw))
    dense = name.startswith(("unet", "deeplabv3_"))  # segmentation: logits per pixel at the input's size
    if name.startswith("gfl"):  # detection: per point, 7 class logits and 4 x 17 box bins
        points = sum((-(-hw // s)) ** 2 for s in m.strides)
        assert out.shape == (2, points, 7 + 4 * 17)
    elif name == "resnet_generator":  # image-to-image: an image of num_classes channels in [-1, 1]
        assert out.shape == (2, 7, hw, hw) and out.abs().max() <= 1
    elif name == "patchgan":  # a discriminator: one score per 4x4 patch grid cell (32 -> 16 -> 8 -> 4 -> 3 -> 2)
        assert out.shape == (2, 1, 2, 2)
    else:
        assert out.shape == ((2, 7, hw, hw) if dense else (2, 7))
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_in_channels_and_unknown_name():
    assert create_model("resnet8", in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(RegistryError, match="unknown model 'resnet2O'; did you mean .*'resnet20'"):
        create_model("resnet2O")
