"""Liu et al., "Knowledge Distillation via Instance Relationship Graph", CVPR 2019."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..losses import irg_edge, irg_transformation
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class IRGConfig(LayerPairsConfig):
    vertex_weight: float = 1.0
    edge_weight: float = 1.0
    transformation_weight: float = 1.0


@register_method
class IRG(LayerPairsMethod):
    """Instance relationship graph: per layer, a graph whose vertices are the batch's instances and whose
    edges are their pairwise distances; the student matches the teacher's graph and how it transforms
    from layer to layer.

    ``L = CE + w_v * mean (z_s - z_t)^2  (vertices: the logits)
          + w_e * sum_l mean (D_s^l - D_t^l)^2  (edges: normalised distance matrices of pooled features)
          + w_t * sum_{l -> l+1} mean (T_s - T_t)^2  (transformation: how far each instance moves)``
    over the stage layers (paper eq. (3)-(7)). The paper tunes the three weights per experiment; 1.0
    each is our default. Transformations between layers of different widths compare channel-pooled
    vectors (see :func:`~kdkit.losses.irg_transformation`).
    """

    name = "irg"
    family = "relation"
    paper = "Liu et al. 2019, Knowledge Distillation via Instance Relationship Graph"
    Config = IRGConfig

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        c = self.cfg
        fs = [out.s_feats[s] for s in self.student_specs]
        ft = [out.t_feats[t] for t in self.teacher_specs]
        terms = {}
        if c.vertex_weight:
            terms["irg_vertex"] = c.vertex_weight * F.mse_loss(out.s_logits.float(),
                                                               out.t_logits_mean.detach().float())
        if c.edge_weight:
            terms["irg_edge"] = c.edge_weight * sum(irg_edge(a, b) for a, b in zip(fs, ft))
        if c.transformation_weight and len(fs) > 1:
            terms["irg_transformation"] = c.transformation_weight * sum(
                irg_transformation(fs[i], fs[i + 1], ft[i], ft[i + 1]) for i in range(len(fs) - 1))
        return terms
