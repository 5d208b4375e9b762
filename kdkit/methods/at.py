"""Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017 (activation-based)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import attention_transfer
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class ATConfig(LayerPairsConfig):
    beta: float = 1000.0
    p: float = 2.0


@register_method
class AT(LayerPairsMethod):
    """Activation-based attention transfer on several layer pairs.

    ``L = CE + beta * sum_j mean_{b,k} (Q_s^j[b,k] / ||Q_s^j[b]|| - Q_t^j[b,k] / ||Q_t^j[b]||)^2`` with
    ``Q = mean_c |A_c|^p``, p=2 and beta=1000. This is the authors' code (``opt.beta * sum(at_losses)``,
    run with ``--beta 1e+3``), which RepDistiller (``-b 1000``) and mdistiller (``FEAT_WEIGHT: 1000``)
    follow and which produced the published numbers. The paper's eq. (2) writes ``beta/2`` and a p-norm,
    with beta=10^3 "divided by the number of elements in the attention map and the batch size"; its code
    applies the full beta to the mean, and so do we. Pairs default to the last stage of each resolution
    of both models (as many pairs as the shallower model has stages); when a pair differs in spatial
    size, the larger map is average-pooled to the smaller. Combine with ``kd`` for AT+KD.
    """

    name = "at"
    family = "feature"
    paper = "Zagoruyko & Komodakis 2017, Paying More Attention to Attention"
    Config = ATConfig
    tasks = ("classification", "segmentation")  # on dense features as well
    needs_maps = "attention is a spatial map: the channels' activations summed at each position"

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        total = sum(attention_transfer(out.s_feats[s], out.t_feats[t], self.cfg.p)
                    for s, t in zip(self.student_specs, self.teacher_specs))
        return {"at": self.cfg.beta * total}
