"""MobileNetV2 for 32x32 inputs (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018).

``mobilenetv2`` is the half-width CIFAR variant used in the CRD benchmark (Tian et al. 2020): width
multiplier 0.5, expansion 6, a stride-1 stem and stride 1 in the first two stages so 32x32 inputs end at
2x2, and the full 1280-channel last convolution. ``mobilenetv2_w1`` is the full-width model.
Stage modules are named ``stage0``..``stage6``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .zoo import register_model


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    # (expansion, channels, blocks, stride) per stage; strides adapted to 32x32 inputs
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 0.5,
                 last_channels: int = 1280):
        super().__init__()
        cin = int(32 * width)
        self.stem = _conv_bn(in_channels, cin, 3, 1)
        for i, (t, c, n, s) in enumerate(self.SETTINGS):
            cout = int(c * width)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        self.num_stages = len(self.SETTINGS)
        last = int(last_channels * width) if width > 1.0 else last_channels
        self.head = _conv_bn(cin, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i}")(x)
        return self.classifier(self.avgpool(self.head(x)).flatten(1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width=0.5)


@register_model("mobilenetv2_w1")
def mobilenetv2_w1(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width=1.0)
