"""Sun et al., "Patient Knowledge Distillation for BERT Model Compression", EMNLP 2019."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import kd_loss, soft_targets
from ..losses.text import patience
from .base import Method, MethodConfig, Outputs, register_method
from .transformer import check_map, layout


@dataclass
class PKDConfig(MethodConfig):
    strategy: Literal["skip", "last"] = "skip"  # PKD-Skip: every (N/M)-th teacher layer; PKD-Last: the last ones
    layer_map: list[list[int]] | None = None  # pairs [student, teacher] of layers (1-based); overrides strategy
    beta: float = 100.0  # weight of the patience loss (the paper searches 10-1000)
    alpha: float = 0.5  # weight of the soft loss; the label cross-entropy gets 1 - alpha
    temperature: float = 5.0  # the paper searches 5, 10, 20

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@register_method
class PKD(Method):
    """Patient KD: soft-target KD plus the patience loss, the mean squared error of the L2-normalised
    [CLS] hidden states (the first token's) of student layers ``1..M-1`` and their teacher layers (the last
    layer is left to KD): PKD-Skip takes teacher layers ``N/M, 2N/M, ...``, PKD-Last ``N-M+1, ..., N-1``.
    A student of another width than the teacher's gets a learnt linear projection of its states."""

    name = "pkd"
    family = "feature"
    paper = "Sun et al. 2019, Patient Knowledge Distillation for BERT Model Compression"
    Config = PKDConfig
    tasks = ("text_classification",)
    uses_teacher_features = True

    def setup(self, s_info, t_info) -> None:
        if t_info is None:
            raise ConfigError("pkd needs a teacher")
        s, t = layout(s_info, self.name), layout(t_info, self.name)
        m, n = len(s.layers), len(t.layers)
        if self.cfg.layer_map is not None:
            pairs = check_map(self.cfg.layer_map, s, t, self.name, allow_embeddings=False)
        elif self.cfg.strategy == "skip":
            pairs = [(i, i * (n // m)) for i in range(1, m)]
        else:
            pairs = [(i, n - m + i) for i in range(1, m)]
        if not pairs:
            raise ConfigError(f"pkd: a student of {m} layer(s) has no intermediate layer to match (give layer_map)")
        if n < m:
            raise ConfigError(f"pkd: the teacher has {n} layers, fewer than the student's {m}")
        self.pairs = [(s.hidden(a), t.hidden(b)) for a, b in pairs]
        self.student_specs = [a for a, _ in self.pairs]
        self.teacher_specs = [b for _, b in self.pairs]
        self.project = nn.Linear(s.width, t.width) if s.width != t.width else nn.Identity()

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.alpha

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        t = self.cfg.temperature
        terms = {"kd": self.cfg.alpha * kd_loss(out.s_logits, soft_targets(out.t_logits, t), t)}
        if self.cfg.beta:
            s_cls = torch.stack([self.project(out.s_feats[a][:, 0]) for a, _ in self.pairs], 1)
            t_cls = torch.stack([out.t_feats[b][:, 0].detach() for _, b in self.pairs], 1)
            terms["patience"] = self.cfg.beta * patience(s_cls, t_cls)
        return terms
