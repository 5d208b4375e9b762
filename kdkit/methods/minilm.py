"""Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained
Transformers", Findings of ACL 2021."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..errors import ConfigError
from ..losses.text import relation_kl
from .base import Method, MethodConfig, Outputs, register_method
from .transformer import head_count, layout


@dataclass
class MiniLMConfig(MethodConfig):
    relation_heads: int | None = None  # default: the teacher's attention heads
    student_layer: int | None = None  # 1-based; default the last
    teacher_layer: int | None = None  # 1-based; default the last (the paper: an upper-middle one of large teachers)
    relations: list[str] = field(default_factory=lambda: ["q", "k", "v"])  # Q-Q, K-K, V-V
    weight: float = 1.0

    def validate(self) -> None:
        if not self.relations or any(r not in ("q", "k", "v") for r in self.relations):
            raise ValueError(f"relations are a non-empty list of q, k, v, got {self.relations}")
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {self.relation_heads}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


@register_method
class MiniLM(Method):
    """Self-attention relation distillation: the queries (keys, values) of one student layer and one teacher
    layer are each split into the same number of relation heads ``A_r``, and the relations
    ``softmax(A_r A_r^T / sqrt(d_r))`` (token to token) of the student learn the teacher's,
    ``KL(R_teacher || R_student)`` summed over keys, averaged over relation heads and real query tokens,
    summed over Q-Q, K-K and V-V. The student may differ from the teacher in width and in attention heads:
    both are split into ``relation_heads``, which must divide both widths. Padding is masked (keys and query
    rows). The label loss stays on (the paper distils before fine-tuning; here both run together).
    """

    name = "minilm"
    family = "relation"
    paper = "Wang et al. 2021, MiniLMv2: Multi-Head Self-Attention Relation Distillation"
    Config = MiniLMConfig
    tasks = ("text_classification",)
    uses_teacher_features = True

    def setup(self, s_info, t_info) -> None:
        if t_info is None:
            raise ConfigError("minilm needs a teacher")
        s, t = layout(s_info, self.name), layout(t_info, self.name)
        teacher = self.cfg.teacher or self.teacher_names[0]
        self.heads = self.cfg.relation_heads or head_count(self.teacher_modules[teacher])
        for net, lay in (("student", s), ("teacher", t)):
            if lay.width % self.heads:
                raise ConfigError(f"minilm: {self.heads} relation heads do not divide the {net}'s width {lay.width}: "
                                  "set relation_heads to a common divisor of both widths")
        a, b = self.cfg.student_layer or len(s.layers), self.cfg.teacher_layer or len(t.layers)
        self.pairs = [(s.projection(a, r), t.projection(b, r)) for r in self.cfg.relations]
        self.student_specs = [p for p, _ in self.pairs]
        self.teacher_specs = [p for _, p in self.pairs]

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        mask = out.inputs["attention_mask"]
        total = sum(relation_kl(out.s_feats[a], out.t_feats[b].detach(), self.heads, mask) for a, b in self.pairs)
        return {"relation": self.cfg.weight * total}
