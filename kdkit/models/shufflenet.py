"""ShuffleNets for 32x32 inputs, in the variants of the CRD benchmark (Tian et al. 2020).

- ShuffleNetV1 (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
  Mobile Devices", CVPR 2018): groups g=3, stage widths 240/480/960, 4/8/4 units, 1x1 stem of 24 channels.
- ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
  ECCV 2018): 1x width, stages 116/232/464 with 3/7/3 units, 1024-channel last convolution, a stride-1
  3x3 stem for 32x32 inputs.
Stage modules are named ``layer1``..``layer3``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .zoo import register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout  # a down-sampling unit concatenates its input
        mid = branch // 4
        g1 = 1 if cin == 24 else groups  # the first pointwise conv after the stem is not grouped
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.g1 = g1
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g1)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.pool is not None:
            return self.relu(torch.cat([out, self.pool(x)], 1))
        return self.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, groups: int = 3,
                 widths: tuple[int, int, int] = (240, 480, 960), units: tuple[int, int, int] = (4, 8, 4)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        cin = 24
        for i, (cout, n) in enumerate(zip(widths, units)):
            blocks = []
            for j in range(n):
                blocks.append(ShuffleV1Unit(cin, cout, 2 if j == 0 else 1, groups))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _pw(cin: int, cout: int, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if act else layers


def _dw(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


class ShuffleV2Unit(nn.Module):
    """A basic unit (channel split, stride 1) or a down-sampling unit (both branches, stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        mid = cout // 2
        if stride == 2:
            self.left = nn.Sequential(*_dw(cin, 2), *_pw(cin, mid))
            self.right = nn.Sequential(*_pw(cin, mid), *_dw(mid, 2), *_pw(mid, mid))
        else:
            self.left = None
            self.right = nn.Sequential(*_pw(mid, mid), *_dw(mid, 1), *_pw(mid, mid))

    def forward(self, x: Tensor) -> Tensor:
        if self.left is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (116, 232, 464, 1024), units: tuple[int, int, int] = (3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24),
                                   nn.ReLU(inplace=True))
        cin = 24
        for i, (cout, n) in enumerate(zip(widths[:3], units)):
            blocks = [ShuffleV2Unit(cin, cout, 2)] + [ShuffleV2Unit(cout, cout, 1) for _ in range(n)]
            cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.conv2 = nn.Sequential(*_pw(cin, widths[3]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.avgpool(self.conv2(x)).flatten(1))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)
