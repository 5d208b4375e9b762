"""Passalis, Tzelepi & Tefas, "Heterogeneous Knowledge Distillation using Information Flow Modeling",
CVPR 2020 (the authors' code: passalis/pkth)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..features import ModelInfo, default_embedding
from ..losses import hkd_loss
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, pair_layers, register_method


@dataclass
class HKDConfig(LayerPairsConfig):
    # the last pair (by default the penultimate features) has a fixed weight; the intermediate pairs start at
    # init_weight and are multiplied by decay every epoch (the authors' exp2_proposed.py: 1, 100 * 0.7^epoch)
    final_weight: float = 1.0
    init_weight: float = 100.0
    decay: float = 0.7
    with_embedding: bool = True  # default layers: the stages, then the penultimate features as the last pair

    def validate(self) -> None:
        if self.final_weight < 0 or self.init_weight < 0:
            raise ValueError(f"final_weight and init_weight must be >= 0, got {self.final_weight}, {self.init_weight}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")


@register_method
class HKD(LayerPairsMethod):
    """Information-flow modelling: at each layer pair the student's and the teacher's batch kernels (cosine
    and Student-t, as conditional probabilities) are matched by the Jeffreys divergence
    (:func:`~kdkit.losses.hkd_loss`), so the student follows how the teacher's representation of the batch
    evolves through its layers. The intermediate pairs weigh ``init_weight * decay^epoch`` (100, 0.7: early
    epochs shape the flow, later ones the final representation), the last pair ``final_weight`` (1).
    Default pairs: the stages found by probing (paired from the deepest), then the penultimate features.

    The authors train by this transfer alone (Adam 1e-3, 50 epochs) and take the teacher from an
    auxiliary network of the student's size trained from the large one by PKT (their exp1_train_aux.py):
    that is a pipeline here (``configs/pipelines/hkd_auxiliary.yaml``). kdkit keeps the label loss (weight
    1) beside it, as for the other feature methods."""

    name = "hkd"
    family = "relation"
    paper = "Passalis et al. 2020, Heterogeneous Knowledge Distillation using Information Flow Modeling"
    Config = HKDConfig

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError("hkd needs a teacher")
        given = self.cfg.student_layers is not None or self.cfg.teacher_layers is not None
        self.student_specs, self.teacher_specs = pair_layers(s_info, t_info, self.cfg.student_layers,
                                                             self.cfg.teacher_layers)
        if not given and self.cfg.with_embedding:
            try:
                s_emb, t_emb = default_embedding(s_info), default_embedding(t_info)
            except ConfigError:
                return  # no classifier layer (a dense network): the stages alone
            self.student_specs.append(s_emb)
            self.teacher_specs.append(t_emb)

    def weights(self, epoch: int) -> list[float]:
        """Each pair's weight at ``epoch`` (0-based): the decaying intermediate ones, then the last."""
        n = len(self.student_specs)
        return [self.cfg.init_weight * self.cfg.decay ** epoch] * (n - 1) + [self.cfg.final_weight]

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        terms = [w * hkd_loss(out.s_feats[s], out.t_feats[t])
                 for w, s, t in zip(self.weights(out.epoch), self.student_specs, self.teacher_specs) if w]
        return {"hkd": sum(terms)} if terms else {}
