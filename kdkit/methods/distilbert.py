"""Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter", NeurIPS
EMC^2 Workshop 2019."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import kd_loss, soft_targets
from ..losses.text import cosine_hidden
from .base import Method, MethodConfig, Outputs, register_method
from .transformer import layout


@dataclass
class DistilBERTConfig(MethodConfig):
    temperature: float = 2.0  # the authors' train.py default
    alpha: float = 0.5  # weight of the soft loss; the label cross-entropy gets 1 - alpha
    cos_weight: float = 1.0  # the cosine loss on the last hidden states (the authors' alpha_cos)
    student_layer: int | None = None  # 1-based hidden state whose direction is matched; default the last
    teacher_layer: int | None = None

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.cos_weight < 0:
            raise ValueError(f"cos_weight must be >= 0, got {self.cos_weight}")


@register_method
class DistilBERT(Method):
    """Soft-target KD at temperature ``T`` (``T^2 KL``, batch mean, as the authors' ``loss_ce``) plus the
    cosine loss ``1 - cos(h_s, h_t)`` between the student's and the teacher's last hidden states over the
    real tokens (the authors' ``loss_cos``; they use it where the student has the teacher's width; a
    student of another width gets a learnt linear projection to the teacher's). The authors' masked-language
    loss is the label cross-entropy here, weighted ``1 - alpha``."""

    name = "distilbert"
    family = "response"
    paper = "Sanh et al. 2019, DistilBERT, a distilled version of BERT"
    Config = DistilBERTConfig
    tasks = ("text_classification",)
    uses_teacher_features = True

    def setup(self, s_info, t_info) -> None:
        if t_info is None:
            raise ConfigError("distilbert needs a teacher")
        s, t = layout(s_info, self.name), layout(t_info, self.name)
        a, b = self.cfg.student_layer or len(s.layers), self.cfg.teacher_layer or len(t.layers)
        self.student_specs, self.teacher_specs = [s.hidden(a, first=1)], [t.hidden(b, first=1)]
        self.project = nn.Linear(s.width, t.width) if s.width != t.width else nn.Identity()

    def ce_weight(self) -> float:
        return 1.0 - self.cfg.alpha

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        t = self.cfg.temperature
        terms = {"kd": self.cfg.alpha * kd_loss(out.s_logits, soft_targets(out.t_logits, t), t)}
        if self.cfg.cos_weight:
            (a,), (b,) = self.student_specs, self.teacher_specs
            terms["cos"] = self.cfg.cos_weight * cosine_hidden(self.project(out.s_feats[a]), out.t_feats[b].detach(),
                                                               out.inputs["attention_mask"])
        return terms
