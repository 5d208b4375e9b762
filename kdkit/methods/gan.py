"""Conditional GAN training of an image-to-image generator (pix2pix: Isola et al., "Image-to-Image
Translation with Conditional Adversarial Networks", CVPR 2017) and its compression by distillation
(GAN Compression: Li et al., "GAN Compression: Efficient Architectures for Interactive Conditional GANs",
CVPR 2020).

Both run under the ``image_to_image`` task, whose L1 loss is the reconstruction term: ``lambda_recon``
(100, both papers) is this method's factor on it (:meth:`Method.ce_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import ModelInfo, unwrap
from .adversary import Adversary
from .base import Method, MethodConfig, Outputs, register_method


def gan_loss(scores: Tensor, real: bool, mode: str, for_discriminator: bool) -> Tensor:
    """The adversarial loss of per-patch ``scores`` labelled ``real`` or fake (GAN Compression's
    ``GANLoss``): ``hinge`` (the discriminator's ``mean(relu(1 -/+ D))``, the generator's ``-mean(D)``),
    ``lsgan`` (squared error to 1 or 0) or ``vanilla`` (binary cross-entropy on logits)."""
    if mode == "hinge":
        if not for_discriminator:
            return -scores.mean()
        return F.relu(1 - scores).mean() if real else F.relu(1 + scores).mean()
    target = torch.full_like(scores, 1.0 if real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(scores, target)
    return F.binary_cross_entropy_with_logits(scores, target)


@dataclass
class GanConfig(MethodConfig):
    lambda_gan: float = 1.0  # the generator's adversarial term (GAN Compression's lambda_gan)
    lambda_recon: float = 100.0  # the factor on the task's L1 (pix2pix's lambda_L1, GAN Compression's lambda_recon)
    gan_mode: Literal["hinge", "lsgan", "vanilla"] = "hinge"  # GAN Compression's default; pix2pix's is vanilla
    conditional: bool = True  # the discriminator sees the input beside the image (pix2pix's conditional GAN)
    discriminator: str = "patchgan"  # a zoo name, built with in_channels and discriminator_kwargs
    discriminator_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {ndf: 64, n_layers: 2}
    # a kdkit checkpoint of a run with a gan or gan_compression method (the teacher's): the discriminator starts
    # from its weights, as GAN Compression's restore_D_path (its Adam moments start at zero)
    discriminator_checkpoint: str | None = None
    lr: float = 2e-4  # the discriminator's Adam (pix2pix and GAN Compression: lr 2e-4, betas 0.5, 0.999)
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self) -> None:
        for name in ("lambda_gan", "lambda_recon"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")


@register_method
class Gan(Method):
    """pix2pix's objective for the student generator G: ``lambda_recon * L1(G(x), y) + lambda_gan *
    L_GAN(D(x, G(x)))``; after each generator step the discriminator D (a PatchGAN by default, method-owned:
    :class:`~kdkit.methods.adversary.Adversary` with its own Adam, saved in the checkpoint) takes one step on
    ``(L_D(D(x, y), real) + L_D(D(x, G(x)), fake)) / 2`` with the images of that step, as GAN Compression's
    distiller orders them. No teacher: the baseline that ``gan_compression`` is compared with."""

    name = "gan"
    family = "baseline"
    paper = "Isola et al. 2017, Image-to-Image Translation with Conditional Adversarial Networks"
    Config = GanConfig
    needs_teacher = False
    needs_dense_output = True
    tasks = ("image_to_image",)

    def ce_weight(self) -> float:
        return self.cfg.lambda_recon

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        self._build_discriminator(s_info)

    def _build_discriminator(self, s_info: ModelInfo) -> None:
        from ..models.zoo import build_network

        shape, inputs = s_info.output_shape or (), s_info.input_shape
        if len(shape) != 3 or not isinstance(inputs, tuple | list) or len(inputs) != 3:
            raise ConfigError(f"method {self.name}: the generator must map images [C, H, W] to images; it takes "
                              f"{inputs} and gives {list(shape)}")
        if tuple(shape[1:]) != tuple(inputs[1:]):
            raise ConfigError(f"method {self.name}: the generator gives images {list(shape)} from inputs "
                              f"{list(inputs)}; an image-to-image generator keeps its input's height and width")
        channels = shape[0] + (inputs[0] if self.cfg.conditional else 0)
        kwargs = {"in_channels": channels, **self.cfg.discriminator_kwargs}
        fed = f"{shape[0]} of the image"
        fed = f"{inputs[0]} of the input + {fed}" if self.cfg.conditional else fed
        try:
            net = build_network(self.cfg.discriminator, num_classes=1, **kwargs)
        except TypeError as e:
            raise ConfigError(f"method {self.name}: discriminator {self.cfg.discriminator}: {e}") from None
        if self.cfg.discriminator_checkpoint:
            self._restore(net, self.cfg.discriminator_checkpoint)
        try:
            with torch.no_grad():
                scores = net(torch.zeros(2, channels, *shape[1:]))
        except RuntimeError as e:
            first = str(e).splitlines()[0][:200]
            raise ConfigError(f"method {self.name}: the discriminator {self.cfg.discriminator} {kwargs} cannot score "
                              f"what it is fed, {channels} channels at {shape[1]}x{shape[2]} ({fed}): "
                              f"{first}") from None
        if not isinstance(scores, Tensor) or scores.shape[0] != 2:
            raise ConfigError(f"method {self.name}: the discriminator {self.cfg.discriminator} must give a tensor of "
                              f"scores per image, got {type(scores).__name__}")
        self.discriminator = Adversary(net, self.cfg.lr, weight_decay=0.0, betas=(self.cfg.beta1, self.cfg.beta2))
        self._kept: tuple[Tensor, Tensor] | None = None
        self.last_discriminator_loss: Tensor | None = None

    def _restore(self, net: nn.Module, path: str) -> None:
        """Load into ``net`` the discriminator of the first gan-like method saved in the checkpoint ``path``."""
        import re

        from ..errors import CheckpointError

        try:  # read here (the methods sit below the engine's checkpoint reader): tensors only, never code
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a missing file, a zip or pickle error, a refused global
            raise CheckpointError(f"method {self.name}: discriminator_checkpoint {path} cannot be read as a kdkit "
                                  f"checkpoint: {str(e).splitlines()[0][:200]}") from None
        state = ckpt.get("distiller") if isinstance(ckpt, dict) else None
        state = state if isinstance(state, dict) else {}
        found: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            m = re.fullmatch(r"methods\.(\d+)\.discriminator\.net\.(.+)", key)
            if m:
                found.setdefault(m.group(1), {})[m.group(2)] = value
        if not found:
            raise ConfigError(f"method {self.name}: discriminator_checkpoint {path} holds no discriminator (a run "
                              "trained with gan or gan_compression has one)")
        weights = found[min(found, key=int)]
        try:
            net.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).splitlines()[-1].strip()[:200]
            raise CheckpointError(f"method {self.name}: the discriminator in {path} does not fit "
                                  f"{self.cfg.discriminator} {self.cfg.discriminator_kwargs}: {first}") from None

    def _pair(self, inputs: Tensor, image: Tensor) -> Tensor:
        return torch.cat([inputs.to(image.dtype), image], 1) if self.cfg.conditional else image

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        fake, condition = out.s_logits.float(), out.inputs.float()
        real = self.task.target_image(out.targets)
        self._kept = (self._pair(condition, fake).detach(), self._pair(condition, real).detach())
        if self.cfg.lambda_gan == 0:
            return {}
        scores = self.discriminator(self._pair(condition, fake))
        return {"gan": self.cfg.lambda_gan * gan_loss(scores, True, self.cfg.gan_mode, for_discriminator=False)}

    def after_step(self) -> None:
        if self._kept is None:
            return
        fake, real = self._kept
        self._kept = None
        mode = self.cfg.gan_mode

        def discriminator_loss() -> Tensor:
            return 0.5 * (gan_loss(self.discriminator(fake), False, mode, True) +
                          gan_loss(self.discriminator(real), True, mode, True))

        self.last_discriminator_loss = self.discriminator.update(discriminator_loss)


@dataclass
class GanCompressionConfig(GanConfig):
    lambda_distill: float = 1.0  # GAN Compression's default
    # the distilled layers, paired in order; default: each generator's mapping_layers() (GAN Compression's:
    # the encoder's output and every third residual block)
    student_layers: list[str] | None = None
    teacher_layers: list[str] | None = None

    def validate(self) -> None:
        super().validate()
        if self.lambda_distill < 0:
            raise ValueError(f"lambda_distill must be >= 0, got {self.lambda_distill}")


@register_method
class GanCompression(Gan):
    """GAN Compression's distillation objective for a narrower student generator: ``gan``'s terms plus
    ``lambda_distill * sum_i MSE(A_i(S_i), T_i)`` over the mapped layers, where ``A_i`` is a learned 1x1
    convolution from the student's width to the teacher's (drawn from N(0, 0.02), trained with the
    student), ``S_i``/``T_i`` the student's and the teacher's maps (their ``resnet_distiller.py``
    ``calc_distill_loss``). Defaults are theirs: lambda_recon 100, lambda_distill 1, lambda_gan 1, hinge
    loss, Adam 2e-4 (0.5, 0.999) for the discriminator, layers ``down2`` and every third block. Like theirs,
    the discriminator can start from the teacher's: ``discriminator_checkpoint``."""

    name = "gan_compression"
    family = "feature"
    paper = "Li et al. 2020, GAN Compression: Efficient Architectures for Interactive Conditional GANs"
    Config = GanCompressionConfig
    needs_teacher = True
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("gan_compression needs a teacher generator")
        self._build_discriminator(s_info)
        teacher = self.cfg.teacher or self.teacher_names[0]
        s_layers = self.cfg.student_layers or self._default_layers(self.networks["student"], "student")
        t_layers = self.cfg.teacher_layers or self._default_layers(self.teacher_modules[teacher], "teacher")
        if len(s_layers) != len(t_layers) or not s_layers:
            raise ConfigError(f"gan_compression: student_layers ({len(s_layers)}) and teacher_layers "
                              f"({len(t_layers)}) must pair up, at least one pair")
        self.student_specs, self.teacher_specs = list(s_layers), list(t_layers)
        adapters = []
        for s, t in zip(s_layers, t_layers):
            ss, ts = s_info.shape(s), t_info.shape(t)
            if len(ss) != 3 or len(ts) != 3 or ss[1:] != ts[1:]:
                raise ConfigError(f"gan_compression: student layer {s} {list(ss)} and teacher layer {t} {list(ts)} "
                                  "must be maps of the same height and width")
            conv = nn.Conv2d(ss[0], ts[0], 1)
            nn.init.normal_(conv.weight, 0.0, 0.02)
            nn.init.zeros_(conv.bias)
            adapters.append(conv)
        self.adapters = nn.ModuleList(adapters)

    @staticmethod
    def _default_layers(net: nn.Module, role: str) -> list[str]:
        layers = getattr(unwrap(net), "mapping_layers", None)
        if not callable(layers):
            raise ConfigError(f"gan_compression: the {role} ({type(unwrap(net)).__name__}) names no mapping layers; "
                              "set student_layers and teacher_layers (`kdkit inspect` lists the modules)")
        return list(layers())

    def distill_loss(self, s_feats: dict[str, Tensor], t_feats: dict[str, Tensor]) -> Tensor:
        """``sum_i MSE(A_i(S_i), T_i)``."""
        return sum(F.mse_loss(a(s_feats[s].float()), t_feats[t].float())
                   for a, s, t in zip(self.adapters, self.student_specs, self.teacher_specs))

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        terms = super().losses(out)
        if self.cfg.lambda_distill:
            terms["distill"] = self.cfg.lambda_distill * self.distill_loss(out.s_feats, out.t_feats)
        return terms
