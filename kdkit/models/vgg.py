"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman, ICLR 2015), as in the CRD benchmark.

Five blocks of 3x3 conv-BN-ReLU layers, each followed by 2x2 max pooling (global average pooling after
the last), then one linear classifier. vgg8 has one conv per block, vgg11 the paper's configuration A,
vgg13 configuration B. Block modules are named ``block0``..``block4``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .zoo import register_model

_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        cin = in_channels
        for i, block in enumerate(cfg):
            layers: list[nn.Module] = []
            for cout in block:
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
                cin = cout
            self.add_module(f"block{i}", nn.Sequential(*layers))
            pool = nn.AdaptiveAvgPool2d(1) if i == len(cfg) - 1 else nn.MaxPool2d(2, 2, ceil_mode=True)
            self.add_module(f"pool{i}", pool)
        self.num_blocks = len(cfg)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"pool{i}")(getattr(self, f"block{i}")(x))
        return self.classifier(x.flatten(1))


def _make(cfg: list[list[int]]):
    def factory(num_classes: int = 10, in_channels: int = 3) -> VGG:
        return VGG(cfg, num_classes, in_channels)

    return factory


for _name, _cfg in _CFG.items():
    register_model(_name)(_make(_cfg))
