"""Segmentation networks: logits ``[B, K, H, W]`` at the input's resolution.

- ``unet_w8`` / ``unet_w16`` / ``unet_w32`` (and ``unet`` with ``width``, ``depth``): a U-Net (Ronneberger
  et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015) with
  ``depth`` 2x2 max-pool downsamplings, two 3x3 conv-BN-ReLU layers per level at widths ``width * 2^i``,
  transposed-convolution upsampling and skip concatenation, and a 1x1 classifier ``head``. Modules:
  ``enc1``..``enc{depth+1}`` (the last the bottleneck), ``dec{depth}``..``dec1``, ``head``. Its output
  stride is ``2^depth``: input sides must be multiples of it.
- ``deeplabv3_<backbone>``: a DeepLabV3-style head (Chen et al., "Rethinking Atrous Convolution for
  Semantic Image Segmentation", 2017: atrous spatial pyramid pooling at rates 1/6/12/18 plus image
  pooling) on a zoo classifier's last stage, its logits upsampled bilinearly to the input size.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zoo import build_network, register_model


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, 2)
        self.conv = _double_conv(2 * cout, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], 1))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 11, in_channels: int = 1, width: int = 16, depth: int = 3):
        super().__init__()
        for name, value, high in (("width", width, 4096), ("depth", depth, 8)):
            if type(value) is not int or not 1 <= value <= high:
                raise ValueError(f"unet: {name} must be an integer in [1, {high}], got {value!r}")
        self.depth, self.output_stride = depth, 2 ** depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        cin = in_channels
        for i, w in enumerate(widths):
            self.add_module(f"enc{i + 1}", _double_conv(cin, w))
            cin = w
        for i in range(depth, 0, -1):
            self.add_module(f"dec{i}", _Up(widths[i], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise RuntimeError(f"a U-Net of depth {self.depth} needs input sides that are multiples of its output "
                               f"stride {self.output_stride}; got {h}x{w}")
        skips = []
        for i in range(self.depth + 1):
            x = getattr(self, f"enc{i + 1}")(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in range(self.depth, 0, -1):
            x = getattr(self, f"dec{i}")(x, skips[i - 1])
        return self.head(x)


@register_model("unet")
def unet(num_classes: int = 11, in_channels: int = 1, width: int = 16, depth: int = 3) -> UNet:
    return UNet(num_classes, in_channels, width, depth)


for _w in (8, 16, 32):
    register_model(f"unet_w{_w}")(lambda num_classes=11, in_channels=1, _w=_w: UNet(num_classes, in_channels, _w))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, 3x3 branches at ``rates``, and image-level pooling,
    concatenated and projected to ``channels``."""

    def __init__(self, cin: int, channels: int = 64, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        def cbr(k: int, d: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, channels, k, 1, d if k == 3 else 0, d, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList([cbr(1, 1), *[cbr(3, r) for r in rates]])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1, bias=False),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False),
                                     nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLabV3(nn.Module):
    """A zoo classifier's convolutional trunk (every child module before its global pooling), then ASPP and a
    3x3 conv-BN-ReLU and 1x1 classifier; logits upsampled bilinearly to the input size."""

    def __init__(self, backbone: str, num_classes: int = 11, in_channels: int = 1, channels: int = 64):
        super().__init__()
        net = build_network(backbone, num_classes=num_classes, in_channels=in_channels)
        trunk = []
        for name, child in net.named_children():
            if isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)):
                break
            trunk.append((name, child))
        if not trunk:
            raise ValueError(f"deeplabv3: {backbone} has no convolutional trunk before its pooling")
        self.backbone = nn.Sequential(OrderedDict(trunk))
        with torch.no_grad():
            probe = self.backbone(torch.zeros(1, in_channels, 32, 32))
        cin, self.output_stride = probe.shape[1], 32 // probe.shape[-1]
        self.aspp = ASPP(cin, channels)
        self.head = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return F.interpolate(self.head(self.aspp(self.backbone(x))), size=size, mode="bilinear", align_corners=False)


for _b in ("resnet8", "resnet20", "resnet8x4", "cnn_tiny", "cnn_small", "cnn_medium"):
    register_model(f"deeplabv3_{_b}")(
        lambda num_classes=11, in_channels=1, channels=64, _b=_b: DeepLabV3(_b, num_classes, in_channels, channels))
