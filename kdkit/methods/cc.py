"""Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import correlation_congruence
from .base import EmbeddingConfig, EmbeddingMethod, Outputs, register_method


@dataclass
class CCConfig(EmbeddingConfig):
    beta: float = 0.02
    gamma: float = 0.4  # RBF kernel width
    order: int = 2  # Taylor expansion order P

    def __post_init__(self) -> None:
        if self.order < 0:
            raise ValueError("order must be >= 0")


@register_method
class CC(EmbeddingMethod):
    """Correlation congruence: match the ``[B, B]`` correlation between instances, computed with a
    Gaussian RBF kernel approximated by a P-th order Taylor series on L2-normalised embeddings.

    ``L = CE + beta * ||C_s - C_t||_F^2 / B^2`` (paper eq. (5), (9)); gamma=0.4, P=2 as in the paper.
    The paper adds CC to KD (combine with ``kd``). beta=0.02 is the weight of the CRD CIFAR-100
    benchmark, whose CC is a simpler correlation of linear embeddings; ours needs no embedding because
    the correlation matrix is ``[B, B]`` whatever the feature widths.
    """

    name = "cc"
    family = "relation"
    paper = "Peng et al. 2019, Correlation Congruence for Knowledge Distillation"
    Config = CCConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        return {"cc": c.beta * correlation_congruence(*self.embeddings(out), c.gamma, c.order)}
