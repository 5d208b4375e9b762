"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import pkt_loss
from .base import EmbeddingConfig, EmbeddingMethod, Outputs, register_method


@dataclass
class PKTConfig(EmbeddingConfig):
    beta: float = 30000.0


@register_method
class PKT(EmbeddingMethod):
    """Probabilistic knowledge transfer: match the conditional probability distributions ``p_{i|j}``
    that a cosine-similarity kernel induces over the batch in each feature space (KL divergence).

    ``L = CE + beta * mean_{i,j} p_t log(p_t / p_s)``. The paper trains with the PKT loss alone;
    beta=30000 added to CE is the CRD CIFAR-100 benchmark setting. Dimensions may differ.
    """

    name = "pkt"
    family = "relation"
    paper = "Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge Transfer"
    Config = PKTConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {"pkt": self.cfg.beta * pkt_loss(*self.embeddings(out))}
