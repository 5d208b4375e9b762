"""GFL-style one-stage detectors: the detection task's output contract (:mod:`kdkit.tasks.detection`),
``[B, A, K + 4 (reg_max + 1)]`` over the points of every FPN level, with ``strides`` and ``reg_max`` stated.

Architecture (Li et al., "Generalized Focal Loss", NeurIPS 2020, on an FPN: Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017): a backbone's last three levels; ``neck``: 1x1 lateral convs,
top-down nearest upsampling and addition, a 3x3 conv per level (modules ``neck.out0`` .. ``neck.out2``,
finest first: the features detection distillation taps); ``head``: shared over the levels, a class tower
and a box tower of ``convs`` 3x3 conv-GroupNorm-ReLU layers, a 3x3 class conv (bias at the 0.01 prior) and
a 3x3 box conv giving 4 x (reg_max + 1) bin logits, times a learnt scale per level.

- ``gfl_w8`` / ``gfl_w16`` / ``gfl_w32`` (``gfl`` with ``width``): a compact backbone (a stride-2 stem, then
  stages of a stride-2 and a stride-1 3x3 conv-BN-ReLU at widths 2w, 4w, 8w: strides 4, 8, 16, for small
  inputs such as 64x64 canvases); FPN and head at ``2 * width`` channels.
- ``gfl_<backbone>``: a zoo classifier's convolutional trunk (its children before the global pooling), the
  last child output at each of its last three resolutions (CIFAR ResNets on 64x64: strides 1, 2, 4).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zoo import build_network, register_model


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactBackbone(nn.Module):
    """Stem (stride 2, ``width``), then three stages (stride 2 each) at ``2w, 4w, 8w``: levels of strides 4, 8, 16."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stem = _cbr(in_channels, width, 2)
        widths = [width, 2 * width, 4 * width, 8 * width]
        for i in range(3):
            stage = nn.Sequential(_cbr(widths[i], widths[i + 1], 2), _cbr(widths[i + 1], widths[i + 1]))
            self.add_module(f"stage{i + 1}", stage)
        self.channels, self.strides = widths[1:], (4, 8, 16)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for i in range(3):
            x = getattr(self, f"stage{i + 1}")(x)
            out.append(x)
        return out


class TrunkLevels(nn.Module):
    """A zoo classifier's trunk, giving the last child's output at each of its last three resolutions."""

    def __init__(self, backbone: str, in_channels: int, probe_size: int = 64):
        super().__init__()
        net = build_network(backbone, num_classes=10, in_channels=in_channels)
        trunk = []
        for name, child in net.named_children():
            if isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)):
                break
            trunk.append((name, child))
        self.trunk = nn.Sequential(OrderedDict(trunk))
        with torch.no_grad():
            was = self.trunk.training
            shapes = [o.shape for o in self._outputs(torch.zeros(2, in_channels, probe_size, probe_size))]
            self.trunk.train(was)
        last: dict[int, int] = {}
        for i, s in enumerate(shapes):
            last[s[-1]] = i  # the last child at each width
        sides = sorted(last, reverse=True)
        if len(sides) < 3:
            raise ValueError(f"gfl_{backbone}: its trunk has {len(sides)} resolutions; a detector needs three")
        self.taps = [last[s] for s in sides[-3:]]
        self.channels = [shapes[i][1] for i in self.taps]
        self.strides = tuple(probe_size // s for s in sides[-3:])

    def _outputs(self, x: Tensor) -> list[Tensor]:
        out = []
        for child in self.trunk:
            x = child(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = self._outputs(x)
        return [outs[i] for i in self.taps]


class FPN(nn.Module):
    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        for i in range(len(channels)):
            self.add_module(f"out{i}", nn.Conv2d(width, width, 3, 1, 1))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [getattr(self, f"out{i}")(x) for i, x in enumerate(lat)]


class GFLHead(nn.Module):
    def __init__(self, width: int, num_classes: int, reg_max: int, levels: int, convs: int = 2):
        super().__init__()
        groups = math.gcd(width, 8) if width % 8 else 8

        def tower() -> nn.Sequential:
            return nn.Sequential(*[m for _ in range(convs) for m in (
                nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.GroupNorm(groups, width), nn.ReLU(inplace=True))])
        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.Conv2d(width, num_classes, 3, 1, 1)
        self.box = nn.Conv2d(width, 4 * (reg_max + 1), 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = []
        for i, f in enumerate(feats):
            c = self.cls(self.cls_tower(f))
            b = self.box(self.box_tower(f)) * self.scales[i]
            out.append(torch.cat([c, b], 1).flatten(2).transpose(1, 2))  # [B, H*W, K + 4(R+1)]
        return torch.cat(out, 1)


class GFLDetector(nn.Module):
    """Backbone levels -> FPN (``neck``) -> shared GFL head: ``[B, A, K + 4 (reg_max + 1)]``."""

    def __init__(self, backbone: nn.Module, num_classes: int, width: int, reg_max: int = 16, convs: int = 2):
        super().__init__()
        if type(reg_max) is not int or reg_max < 1:
            raise ValueError(f"gfl: reg_max must be an integer >= 1, got {reg_max!r}")
        self.backbone = backbone
        self.neck = FPN(list(backbone.channels), width)
        self.head = GFLHead(width, num_classes, reg_max, len(backbone.channels), convs)
        self.strides, self.reg_max = tuple(backbone.strides), reg_max

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.neck(self.backbone(x)))


@register_model("gfl")
def gfl(num_classes: int = 10, in_channels: int = 1, width: int = 16, reg_max: int = 16, convs: int = 2) -> GFLDetector:
    if type(width) is not int or not 1 <= width <= 1024:
        raise ValueError(f"gfl: width must be an integer in [1, 1024], got {width!r}")
    return GFLDetector(CompactBackbone(in_channels, width), num_classes, 2 * width, reg_max, convs)


for _w in (8, 16, 32):
    register_model(f"gfl_w{_w}")(
        lambda num_classes=10, in_channels=1, reg_max=16, _w=_w: gfl(num_classes, in_channels, _w, reg_max))

for _b in ("resnet8", "resnet20", "resnet8x4", "cnn_tiny", "cnn_small", "cnn_medium"):
    register_model(f"gfl_{_b}")(lambda num_classes=10, in_channels=1, width=64, reg_max=16, _b=_b:
                                GFLDetector(TrunkLevels(_b, in_channels), num_classes, width, reg_max))
