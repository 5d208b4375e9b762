"""Image-to-image networks: the generator and the discriminator of pix2pix and GAN Compression.

- ``resnet_generator`` (``ngf``, ``n_blocks``): Johnson et al.'s ResNet generator as pix2pix (Isola et al.,
  "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017) and GAN Compression
  (Li et al., "GAN Compression: Efficient Architectures for Interactive Conditional GANs", CVPR 2020) use
  it: a 7x7 convolution at ``ngf`` channels, two stride-2 convolutions (``ngf * 2``, ``ngf * 4``),
  ``n_blocks`` residual blocks at ``ngf * 4``, two transposed convolutions back to ``ngf`` and a 7x7
  convolution to the output channels, ``tanh``: outputs in [-1, 1]. Instance norm, reflection padding,
  weights drawn from N(0, 0.02) as those papers' code does. Modules: ``stem``, ``down1``, ``down2``,
  ``blocks.0`` .. ``blocks.{n-1}``, ``up1``, ``up2``, ``head``. Input sides must be multiples of 4.
  ``num_classes`` is the number of output channels (the target image's).
- ``patchgan`` (``ndf``, ``n_layers``): the PatchGAN discriminator (pix2pix's ``n_layers`` one): 4x4
  convolutions, ``n_layers`` of stride 2 doubling the width from ``ndf`` (up to ``8 * ndf``), one of stride
  1, and a 4x4 convolution to one score per patch; LeakyReLU(0.2), instance norm after all but the first.
  ``in_channels`` is what it is fed (conditional: the input's and the output's channels together).
"""

from __future__ import annotations

from torch import Tensor, nn

from .zoo import register_model


def _init_gan(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for convolutions (pix2pix's ``init_type normal``, gain 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check(name: str, value: int, low: int, high: int, model: str) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{model}: {name} must be an integer in [{low}, {high}], got {value!r}")


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, num_classes: int = 1, in_channels: int = 1, ngf: int = 32, n_blocks: int = 6):
        super().__init__()
        _check("ngf", ngf, 1, 4096, "resnet_generator")
        _check("n_blocks", n_blocks, 0, 64, "resnet_generator")
        self.ngf, self.n_blocks = ngf, n_blocks
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf),
                                  nn.ReLU(True))
        self.down1 = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), nn.InstanceNorm2d(2 * ngf), nn.ReLU(True))
        self.down2 = nn.Sequential(nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1), nn.InstanceNorm2d(4 * ngf), nn.ReLU(True))
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(n_blocks)])
        self.up1 = nn.Sequential(nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1),
                                 nn.InstanceNorm2d(2 * ngf), nn.ReLU(True))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(ngf),
                                 nn.ReLU(True))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, num_classes, 7), nn.Tanh())
        _init_gan(self)

    def mapping_layers(self) -> list[str]:
        """GAN Compression's distilled layers: the encoder's output and every third residual block
        (``model.9, 12, 15, 18`` of their 9-block generator)."""
        return ["down2", *(f"blocks.{i}" for i in range(2, self.n_blocks, 3))]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise RuntimeError(f"resnet_generator downsamples twice: input sides must be multiples of 4, got {h}x{w}")
        x = self.down2(self.down1(self.stem(x)))
        return self.head(self.up2(self.up1(self.blocks(x))))


class PatchGAN(nn.Sequential):
    def __init__(self, num_classes: int = 1, in_channels: int = 2, ndf: int = 64, n_layers: int = 3):
        _check("ndf", ndf, 1, 4096, "patchgan")
        _check("n_layers", n_layers, 1, 8, "patchgan")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for n in range(1, n_layers + 1):
            w = ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(c, w, 4, 2 if n < n_layers else 1, 1), nn.InstanceNorm2d(w), nn.LeakyReLU(0.2, True)]
            c = w
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        super().__init__(*layers)
        _init_gan(self)


@register_model("resnet_generator")
def resnet_generator(num_classes: int = 1, in_channels: int = 1, ngf: int = 32, n_blocks: int = 6) -> ResnetGenerator:
    return ResnetGenerator(num_classes, in_channels, ngf, n_blocks)


@register_model("patchgan")
def patchgan(num_classes: int = 1, in_channels: int = 2, ndf: int = 64, n_layers: int = 3) -> PatchGAN:
    return PatchGAN(num_classes, in_channels, ndf, n_layers)


GENERATORS = ("resnet_generator",)  # zoo names whose num_classes is the output image's channels
