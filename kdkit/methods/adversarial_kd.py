"""Adversarial distillation of the output: Xu, Hsu & Huang, "Training Shallow and Thin Networks for
Acceleration via Knowledge Distillation with Conditional Adversarial Networks", ICLR Workshop 2018; Shen,
He & Xue, "MEAL: Multi-Model Ensemble via Adversarial Learning", AAAI 2019 (the authors' code:
AaronHeee/MEAL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import kd_loss
from .adversary import Adversary
from .base import Method, MethodConfig, Outputs, register_method
from .gan import gan_loss


@dataclass
class AdversarialKDConfig(MethodConfig):
    adv_weight: float = 1.0  # the student's adversarial term
    similarity: Literal["l1", "kd", "none"] = "l1"  # MEAL: L1 between the logits; kd: Hinton's term
    similarity_weight: float = 1.0  # MEAL's gamma of the last block
    temperature: float = 4.0  # similarity: kd only
    conditional: bool = False  # the discriminator sees the label too (Xu et al.'s conditional discriminator)
    hidden: int = 64  # the discriminator's two hidden layers
    lr: float = 1e-3  # the discriminator's Adam (MEAL's discriminator learning rate), betas (0.5, 0.999)

    def validate(self) -> None:
        for name in ("adv_weight", "similarity_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError(f"temperature and lr must be > 0, got {self.temperature}, {self.lr}")
        if not 1 <= self.hidden <= 65536:
            raise ValueError(f"hidden must be in [1, 65536], got {self.hidden}")


class LogitDiscriminator(nn.Sequential):
    """An MLP scoring a vector of logits (with the one-hot label, when conditional): two hidden layers with
    LeakyReLU(0.2), one score (a logit of "from the teacher")."""

    def __init__(self, width: int, hidden: int):
        super().__init__(nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, 1))


@register_method
class AdversarialKD(Method):
    """A discriminator learns to tell the teacher's logits from the student's and the student learns to
    fool it, beside a similarity term between the two outputs:

    ``L_student = similarity_weight * sim(z_s, z_t) + adv_weight * BCE(D(z_s), teacher)``

    After each student step the discriminator (method-owned, :class:`~kdkit.methods.adversary.Adversary`
    with its own Adam, saved in the checkpoint) takes one step on ``BCE(D(z_t), teacher) + BCE(D(z_s),
    student)`` with that step's logits. MEAL trains its discriminators through a gradient reversal layer
    on the student's side (the student ascends the discriminator's loss); here the student takes the
    non-saturating form (it descends the loss of being called the teacher), as GANs usually do. MEAL's
    similarity is the L1 distance between the outputs (``similarity: l1``, its ``betweenLoss`` on the last
    block); ``kd`` uses Hinton's term instead. Xu et al.'s discriminator also sees the label
    (``conditional``). MEAL distils several blocks, each with its own discriminator; this method takes the
    logits, where teacher and student always agree in size."""

    name = "adversarial_kd"
    family = "response"
    paper = "Xu et al. 2018 / Shen et al. 2019 (MEAL), adversarial distillation of the output"
    Config = AdversarialKDConfig

    def setup(self, s_info, t_info) -> None:
        shape = s_info.output_shape or ()
        if len(shape) != 1:
            raise ConfigError(f"adversarial_kd scores logits [batch, classes]; the student gives {list(shape)}")
        self.num_classes = shape[0]
        width = shape[0] * (2 if self.cfg.conditional else 1)
        self.discriminator = Adversary(LogitDiscriminator(width, self.cfg.hidden), self.cfg.lr, weight_decay=0.0,
                                       betas=(0.5, 0.999))
        self._kept: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_discriminator_loss: Tensor | None = None

    def _fed(self, logits: Tensor, targets: Tensor) -> Tensor:
        if not self.cfg.conditional:
            return logits
        return torch.cat([logits, F.one_hot(targets, self.num_classes).to(logits.dtype)], 1)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        s, t = out.s_logits.float(), out.t_logits_mean.float()
        self._kept = (s.detach(), t.detach(), out.targets)
        terms = {"adversarial": self.cfg.adv_weight * gan_loss(self.discriminator(self._fed(s, out.targets)), True,
                                                               "vanilla", for_discriminator=False)}
        if self.cfg.similarity == "l1":
            terms["similarity"] = self.cfg.similarity_weight * F.l1_loss(s, t)
        elif self.cfg.similarity == "kd":
            p_t = (t / self.cfg.temperature).softmax(1)
            terms["similarity"] = self.cfg.similarity_weight * kd_loss(s, p_t, self.cfg.temperature)
        return terms

    def after_step(self) -> None:
        if self._kept is None:
            return
        s, t, y = self._kept
        self._kept = None
        fake, real = self._fed(s, y), self._fed(t, y)

        def discriminator_loss() -> Tensor:
            return (gan_loss(self.discriminator(real), True, "vanilla", True)
                    + gan_loss(self.discriminator(fake), False, "vanilla", True))

        self.last_discriminator_loss = self.discriminator.update(discriminator_loss)
