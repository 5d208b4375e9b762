"""Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019: pixel-wise term."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses.dense import pixel_kd
from .base import Method, MethodConfig, Outputs, dense_pair, register_method


@dataclass
class SKDPixelConfig(MethodConfig):
    weight: float = 10.0  # the paper's lambda_1 (eq. 6)
    temperature: float = 1.0  # the paper and its code have none (T=1)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class SKDPixel(Method):
    """Pixel-wise distillation: every pixel's class distribution of the student pulled to the teacher's
    (the teachers' mean logits with several), ``weight * pixel_kd`` (:func:`kdkit.losses.dense.pixel_kd`),
    beside the per-pixel cross-entropy. The authors' code sums over the images of a batch (8 per GPU in
    the paper); here the sum is divided by the batch size, so that ``weight`` (the paper's lambda_1 = 10)
    means the same at any batch size. Logits of another spatial size than the teacher's are resized
    bilinearly to the teacher's first."""

    name = "skd_pixel"
    family = "response"
    paper = "Liu et al. 2019, Structured Knowledge Distillation for Semantic Segmentation"
    Config = SKDPixelConfig
    tasks = ("segmentation",)
    needs_dense_output = True

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        s, t = dense_pair(out.s_logits, out.t_logits_mean)
        return {"pixel": pixel_kd(s, t, self.cfg.temperature, reduction="mean")}

