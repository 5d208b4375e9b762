"""Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019: pair-wise term."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..features import ModelInfo
from ..losses.dense import pairwise_distillation
from .base import Method, MethodConfig, Outputs, default_stages, dense_pair, register_method


@dataclass
class SKDPairConfig(MethodConfig):
    weight: float = 1.0  # the authors' lambda-pa (their training options; the paper's eq. 6 shares lambda_1 = 10)
    scale: float = 0.5  # node size as a fraction of the map's side (the authors' models: 0.5, 2x2 nodes)
    student_layer: str | None = None  # default: the student's deepest (smallest) feature map
    teacher_layer: str | None = None  # default: the teacher's deepest feature map

    def validate(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")


def deepest(info: ModelInfo) -> str:
    """The stage with the smallest spatial map (a U-Net's bottleneck, a backbone's last stage)."""
    stages = [s for s in default_stages(info) if len(info.shape(s)) == 3]
    if not stages:
        raise ConfigError(f"{info.network or 'a network'} has no spatial feature maps; give the layers explicitly")
    return min(stages, key=lambda s: (info.shape(s)[1] * info.shape(s)[2], -stages.index(s)))


@register_method
class SKDPair(Method):
    """Pair-wise distillation: the graph of cosine similarities between pooled feature nodes of the student
    matched to the teacher's (:func:`kdkit.losses.dense.pairwise_distillation`). The channel counts may
    differ (the graph is node by node); maps of other spatial sizes are resized to the teacher's. As in the
    authors' code, the nodes' norms are constants in the backward pass."""

    name = "skd_pair"
    family = "relation"
    paper = "Liu et al. 2019, Structured Knowledge Distillation for Semantic Segmentation"
    Config = SKDPairConfig
    tasks = ("segmentation",)
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("skd_pair needs a teacher")
        self.student_specs = [self.cfg.student_layer or deepest(s_info)]
        self.teacher_specs = [self.cfg.teacher_layer or deepest(t_info)]

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        (s,), (t,) = self.student_specs, self.teacher_specs
        f_s, f_t = dense_pair(out.s_feats[s], out.t_feats[t])
        return {"pair": pairwise_distillation(f_s, f_t, self.cfg.scale)}
