"""Goldblum, Fowl, Feizi & Goldstein, "Adversarially Robust Distillation", AAAI 2020 (the authors' code:
goldblum/AdversariallyRobustDistillation)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..batch import call
from ..errors import ConfigError
from ..features import pick_logits
from ..losses import kd_loss
from ..losses.robust import PGD
from .base import Method, MethodConfig, Outputs, register_method


@dataclass
class ARDConfig(MethodConfig):
    temperature: float = 30.0  # the authors' CIFAR-10 default
    alpha: float = 1.0  # weight of the robust soft loss; the clean cross-entropy gets 1 - alpha
    epsilon: float = 8 / 255  # the L-inf ball, pixel units of [0, 1] images
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True  # a uniform start in the ball (the authors'); off: the attack starts at the image

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        PGD(self.epsilon, self.step_size, self.steps)  # its own checks: epsilon >= 0, step > 0, steps >= 1


@register_method
class ARD(Method):
    """Adversarially robust distillation: the student's output on PGD examples is pulled to the teacher's
    output on the clean image,

    ``L = (1 - alpha) * CE(z_s(x), y) + alpha * T^2 * KL(softmax(z_t(x) / T) || softmax(z_s(x') / T))``

    where ``x'`` is an L-inf PGD attack on the student (``steps`` signed-gradient steps of ``step_size``
    from a uniform random start in the ``epsilon`` ball, raising the student's cross-entropy on the
    labels; :class:`~kdkit.losses.robust.PGD`). Epsilon and step are in pixel units of [0, 1] images: the
    ball is scaled by the loader's normalisation and kept inside the image range. The attack runs on the
    student as it is (train mode, as in the authors' code: its batch norm statistics see the attacked
    batches too). Defaults are the authors' CIFAR-10 settings (T 30, alpha 1, 8/255, 2/255, 10 steps).

    The authors' code uses ``nn.KLDivLoss()``, whose default mean reduction divides by batch size times
    class count, so their soft term is 1/K of the KL divergence per sample; kdkit uses the batch mean
    (:func:`~kdkit.losses.kd_loss`), so their alpha and temperature give a term K times larger here.

    Robust accuracy is a task option of evaluation: ``task: {name: classification, robust: {epsilon: ...}}``
    reports ``robust_top1`` beside top-1 (:class:`~kdkit.tasks.classification.Classification`).
    Each training step costs ``steps`` extra forward and backward passes of the student."""

    name = "ard"
    family = "response"
    paper = "Goldblum et al. 2020, Adversarially Robust Distillation"
    Config = ARDConfig
    temperature_range = (0.5, 100.0)  # the authors use 30

    def setup(self, s_info, t_info) -> None:
        self.attack = PGD(self.cfg.epsilon, self.cfg.step_size, self.cfg.steps, self.cfg.random_start)

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.alpha

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        if out.student is None or not isinstance(out.inputs, Tensor) or not out.inputs.is_floating_point():
            raise ConfigError("ard attacks one float input tensor of the student")
        mean, std = self.input_norm if self.input_norm is not None else (None, None)
        student = lambda v: pick_logits(call(out.student, v))  # noqa: E731
        adv = self.attack.perturb(student, out.inputs, out.targets, mean, std)
        p_t = (out.t_logits_mean.float() / self.cfg.temperature).softmax(1)
        return {"ard": self.cfg.alpha * kd_loss(student(adv), p_t, self.cfg.temperature)}
