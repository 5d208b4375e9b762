"""Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import correlation_congruence
from .base import EmbeddingConfig, EmbeddingMethod, Outputs, register_method


@dataclass
class CCConfig(EmbeddingConfig):
    beta: float = 5.0  # calibrated (see below), not the CRD benchmark's 0.02
    gamma: float = 0.4  # RBF kernel width
    order: int = 2  # Taylor expansion order P

    def validate(self) -> None:
        if self.order < 0:
            raise ValueError("order must be >= 0")


@register_method
class CC(EmbeddingMethod):
    """Correlation congruence: match the ``[B, B]`` correlation between instances, computed with a
    Gaussian RBF kernel approximated by a P-th order Taylor series on L2-normalised embeddings.

    ``L = CE + beta * ||C_s - C_t||_F^2 / B^2`` (paper eq. (5), (9)); gamma=0.4, P=2 as in the paper.
    The paper adds CC to KD (combine with ``kd``). Ours needs no embedding because the correlation
    matrix is ``[B, B]`` whatever the feature widths.

    beta=5 is calibrated, not borrowed. The CRD benchmark's 0.02 belongs to RepDistiller's CC, another
    formula (``mean_i sum_d |e_i - e'_i| |e_(i+1) - e'_(i+1)|`` of two trained 128-d linear embeddings),
    whose value is about 240x ours on the same features; at 0.02 our term would be nearly inert. We
    chose beta so that at the start of training our term has the size, relative to the cross-entropy,
    that RepDistiller's had with 0.02 (about 12% of it): ``python benchmarks/calibrate_weights.py
    --fashion-teacher ...`` measured a weight of 4.7-5.0 (trained cnn_medium teacher, Fashion-MNIST,
    batch 64, median of 3 seeds; ``docs/results/weight_calibration.md``). Other data may call for
    another weight.
    """

    name = "cc"
    family = "relation"
    paper = "Peng et al. 2019, Correlation Congruence for Knowledge Distillation"
    Config = CCConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        return {"cc": c.beta * correlation_congruence(*self.embeddings(out), c.gamma, c.order)}
