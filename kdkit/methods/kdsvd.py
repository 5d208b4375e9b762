"""Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..losses import align_singular_vectors, svd_rbf, top_singular_vectors
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class KDSVDConfig(LayerPairsConfig):
    k: int = 1  # singular vectors kept per layer (the student keeps k + 3 candidates for alignment)
    beta: float = 280.0  # calibrated (see below), not the reference code's 1

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")


@register_method
class KDSVD(LayerPairsMethod):
    """KD-SVD: compress each layer's feature map with a truncated SVD and distil how the dominant
    singular directions of consecutive layers relate.

    Per layer (the stages, pooled to the smallest stage resolution so that all singular vectors live over
    the same spatial positions): the teacher's top-k right singular vectors, and the student's top-(k+3),
    of which the one most aligned with each teacher vector is kept with its sign fixed; both are scaled by
    the teacher's singular values (L2-normalised per sample: our choice, to keep the kernel in range).
    Between consecutive layers an RBF kernel ``exp(-||v^l_i - v^{l-1}_j||^2 / 8)`` gives a ``[k, k]`` map;
    ``L = CE + beta * sum_l mean (G_s^l - G_t^l)^2``. The SVD runs in float64 without gradient problems
    for distinct singular values; k=1 and the kernel width 8 follow the authors' setting.

    beta=280 is calibrated, not borrowed. The reference weight 1 (mdistiller; RepDistiller runs KD-SVD
    with the same code) belongs to their formula: singular vectors over channels (which needs equal
    student and teacher widths), an element-wise RBF, summed over elements and divided by the batch
    size; on the same features that is about 280x our mean over a ``[k, k]`` map, so at 1 our term
    would be inert. ``python benchmarks/calibrate_weights.py --fashion-teacher ...`` measured 281 for
    the weight that gives our term the reference's size relative to the cross-entropy at the start of
    training (trained cnn_medium teacher, equal-width student, Fashion-MNIST, batch 64, median of 3
    seeds; ``docs/results/weight_calibration.md``).
    """

    name = "kdsvd"
    family = "feature"
    paper = "Lee et al. 2018, Self-supervised Knowledge Distillation Using Singular Value Decomposition"
    Config = KDSVDConfig
    relates_consecutive_layers = True

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        fs = [out.s_feats[s] for s in self.student_specs]
        ft = [out.t_feats[t].detach() for t in self.teacher_specs]
        hw = min(min(f.shape[-2:]) for f in fs + ft)
        total, prev = 0.0, None
        for f_s, f_t in zip(fs, ft):
            f_s, f_t = F.adaptive_avg_pool2d(f_s, hw), F.adaptive_avg_pool2d(f_t, hw)
            v_t, s_t = top_singular_vectors(f_t, self.cfg.k)
            v_s, _ = top_singular_vectors(f_s, self.cfg.k + 3)
            v_s = align_singular_vectors(v_s, v_t)
            scale = F.normalize(s_t, dim=1).unsqueeze(2)
            v_s, v_t = v_s * scale, v_t * scale
            if prev is not None:
                g_s, g_t = svd_rbf(v_s, prev[0]), svd_rbf(v_t, prev[1])
                total = total + (g_s - g_t).pow(2).mean()
            prev = (v_s, v_t)
        return {"kdsvd": self.cfg.beta * total.float()}
