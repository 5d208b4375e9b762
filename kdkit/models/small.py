"""Small models for tiny inputs (8x8 digits, 28x28 MNIST-like images) and quick experiments.

- ``mlp``: flatten, two hidden layers (``hidden``), ReLU; takes any input size (``input_size`` pixels
  per side, default 8).
- ``cnn_tiny`` / ``cnn_small`` / ``cnn_medium`` / ``cnn_large``: three stages (``stage1``..``stage3``)
  of two 3x3 conv-BN-ReLU layers, the 2nd and 3rd stage starting at stride 2, then global average
  pooling and a linear classifier. Widths 8/16/32, 16/32/64, 32/64/128 and 64/128/256.
- ``convnet``: the ConvNet of the dataset-condensation papers (Zhao, Mopuri & Bilen 2021; Zhao & Bilen 2023):
  ``depth`` blocks (``block1``..) of a 3x3 convolution of ``width`` channels, instance normalisation (a group
  norm with one channel per group, affine), ReLU and 2x2 average pooling, then a linear classifier on the
  flattened last map, hence ``input_size`` (pixels per side, default 32; 28 for Fashion-MNIST). Width 128,
  depth 3 by default, as in the papers.
"""

from __future__ import annotations

from torch import Tensor, nn

from .zoo import register_model


class MLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 8,
                 hidden: int = 128):
        super().__init__()
        for name, value in (("hidden", hidden), ("input_size", input_size), ("in_channels", in_channels)):
            if type(value) is not int or not 1 <= value <= 1 << 20:
                raise ValueError(f"mlp: {name} must be an integer in [1, {1 << 20}], got {value!r}")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc(self.relu(self.fc2(x)))


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, widths: tuple[int, int, int], num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        cin = in_channels
        for i, w in enumerate(widths):
            self.add_module(f"stage{i + 1}", nn.Sequential(*_cbr(cin, w, 1 if i == 0 else 2), *_cbr(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: int = 128,
                 depth: int = 3):
        super().__init__()
        for name, value, low in (("width", width, 1), ("depth", depth, 1), ("input_size", input_size, 2 ** depth)):
            if type(value) is not int or not low <= value <= 1 << 16:
                raise ValueError(f"convnet: {name} must be an integer in [{low}, {1 << 16}], got {value!r}")
        side, cin = input_size, in_channels
        for i in range(depth):
            self.add_module(f"block{i + 1}", nn.Sequential(nn.Conv2d(cin, width, 3, padding=1),
                                                           nn.GroupNorm(width, width), nn.ReLU(inplace=True),
                                                           nn.AvgPool2d(2)))
            side, cin = side // 2, width
        self.depth = depth
        self.fc = nn.Linear(width * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = getattr(self, f"block{i + 1}")(x)
        return self.fc(x.flatten(1))


@register_model("convnet")
def convnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: int = 128,
            depth: int = 3) -> ConvNet:
    return ConvNet(num_classes, in_channels, input_size, width, depth)


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, hidden: int = 128) -> MLP:
    return MLP(num_classes, in_channels, input_size, hidden)


def _cnn(widths: tuple[int, int, int]):
    def factory(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
        return SmallCNN(widths, num_classes, in_channels)

    return factory


for _name, _w in (("cnn_tiny", (8, 16, 32)), ("cnn_small", (16, 32, 64)), ("cnn_medium", (32, 64, 128)),
                  ("cnn_large", (64, 128, 256))):
    register_model(_name)(_cnn(_w))
