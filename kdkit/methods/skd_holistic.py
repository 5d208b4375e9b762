"""Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019: holistic term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ConfigError
from ..features import ModelInfo
from ..losses.dense import gradient_penalty
from .adversary import Adversary
from .base import Method, MethodConfig, Outputs, dense_pair, register_method


@dataclass
class SKDHolisticConfig(MethodConfig):
    weight: float = 0.1  # lambda_d of the authors' code: on the student's term and on the critic's loss
    gp_weight: float = 10.0  # lambda_gp, WGAN-GP's gradient penalty
    lr: float = 4e-4  # the critic's SGD (the authors' lr-d; momentum 0.9, weight decay 1e-4)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    width: int = 64  # the critic's first convolution's channels (the authors' adv-conv-dim)
    with_image: bool = False  # the critic also sees the image (the paper's conditional form)

    def validate(self) -> None:
        for name in ("lr", "gp_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must be in [0, 1) and weight_decay >= 0")
        if not 1 <= self.width <= 4096:
            raise ValueError(f"width must be in [1, 4096], got {self.width}")


class Critic(nn.Sequential):
    """The authors' discriminator without its self-attention layers: batch norm on the input (their
    preprocess mode 1), three spectrally normalised 4x4 stride-2 convolutions with LeakyReLU(0.1) at
    ``width``, 2x and 4x channels, and a 3x3 convolution to one score per position."""

    def __init__(self, in_channels: int, width: int):
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)]
        c = in_channels
        for w in (width, 2 * width, 4 * width):
            layers += [spectral_norm(nn.Conv2d(c, w, 4, 2, 1)), nn.LeakyReLU(0.1)]
            c = w
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        super().__init__(*layers)


@register_method
class SKDHolistic(Method):
    """Holistic distillation: a critic scores segmentation maps (logits, as in the authors' code; with the
    image when ``with_image``), the teacher's as real and the student's as fake, under WGAN-GP
    (Gulrajani et al. 2017); the student minimises ``-weight * mean(D(student))`` and, after each student
    step, the critic takes one step on ``weight * (mean(D(student)) - mean(D(teacher)) + gp_weight * GP)``
    with its own SGD (:class:`~kdkit.methods.adversary.Adversary`: its state is in the checkpoint and it
    is averaged over DDP ranks). Defaults are the authors' training options (lambda_d 0.1, lambda_gp 10,
    critic SGD lr 4e-4 momentum 0.9 weight decay 1e-4, width 64); their critic also has two
    self-attention layers and a poly-decayed learning rate, this one neither. Maps must be at least 8x8."""

    name = "skd_holistic"
    family = "response"
    paper = "Liu et al. 2019, Structured Knowledge Distillation for Semantic Segmentation"
    Config = SKDHolisticConfig
    needs_dense_output = True
    tasks = ("segmentation",)

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("skd_holistic needs a teacher")
        shape = s_info.output_shape or ()
        if len(shape) != 3 or min(shape[1:]) < 8:
            raise ConfigError(f"skd_holistic scores maps of at least 8x8; the student gives {list(shape)}")
        extra = s_info.input_shape[0] if self.cfg.with_image else 0
        self.critic = Adversary(Critic(shape[0] + extra, self.cfg.width), self.cfg.lr, self.cfg.momentum,
                                self.cfg.weight_decay)
        self._kept: tuple[Tensor, Tensor, Tensor | None] | None = None
        self.last_critic_loss: Tensor | None = None

    def _scored(self, maps: Tensor, image: Tensor | None) -> Tensor:
        if image is None:
            return maps
        if image.shape[-2:] != maps.shape[-2:]:
            image = F.interpolate(image, size=maps.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([maps, image.to(maps.dtype)], 1)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        s, t = dense_pair(out.s_logits, out.t_logits_mean)
        image = out.inputs.detach().float() if self.cfg.with_image else None
        self._kept = (s.detach().float(), t.detach().float(), image)
        return {"holistic": -self.critic(self._scored(s.float(), image)).mean()}

    def after_step(self) -> None:
        if self._kept is None:
            return
        s, t, image = self._kept
        self._kept = None
        real, fake = self._scored(t, image), self._scored(s, image)

        def critic_loss() -> Tensor:
            wasserstein = self.critic(fake).mean() - self.critic(real).mean()
            return self.cfg.weight * (wasserstein + self.cfg.gp_weight * gradient_penalty(self.critic, real, fake))

        self.last_critic_loss = self.critic.update(critic_loss)
