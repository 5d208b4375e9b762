"""Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.text import attention_mse, attention_scores, masked_mse, soft_cross_entropy
from .base import Method, MethodConfig, Outputs, register_method
from .transformer import check_map, head_count, layout


@dataclass
class TinyBERTConfig(MethodConfig):
    # pairs [student, teacher] of hidden-state indices (0: the embeddings, i: layer i's output); default: the
    # embeddings to the embeddings and student layer m to teacher layer m * N / M (the paper's uniform map)
    layer_map: list[list[int]] | None = None
    attention_weight: float = 1.0
    hidden_weight: float = 1.0
    embedding_weight: float = 1.0
    prediction_weight: float = 1.0  # the prediction-layer soft cross-entropy, in the main stage
    temperature: float = 1.0  # of the prediction-layer loss (the authors' task_distill.py: 1)
    label_weight: float = 0.0  # the label cross-entropy beside it (the authors' prediction stage has none)
    # the paper's first stage: intermediate-layer distillation alone for this many epochs, then prediction
    stage1_epochs: int = 0
    main_intermediate: bool = True  # keep the intermediate terms in the main stage (one-stage training)

    def validate(self) -> None:
        for name in ("attention_weight", "hidden_weight", "embedding_weight", "prediction_weight", "label_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class TinyBERT(Method):
    """Transformer distillation: for each mapped layer pair ``(m, g(m))``,

    - attention: MSE of the pre-softmax attention scores ``Q K^T / sqrt(d)`` of student layer ``m`` and
      teacher layer ``g(m)``, over pairs of real tokens (the heads must match in number, as in the paper);
    - hidden states: MSE of ``W_h h_s`` and ``h_t`` (``W_h`` a learnt projection from the student's width to
      the teacher's, one for all layers as in the authors' code, ``fit_dense``), over real tokens;
    - embeddings: the same on hidden state 0;

    then the prediction layer: soft cross-entropy of the student's logits against the teacher's at
    temperature ``T``. The scores are computed from the layers' query and key projections (tapped), so the
    model is not changed. The paper's two stages are ``stage1_epochs`` (intermediate terms alone) followed
    by the prediction loss (``main_intermediate: false``); by default the two train together.
    """

    name = "tinybert"
    family = "feature"
    paper = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding"
    Config = TinyBERTConfig
    tasks = ("text_classification",)
    uses_teacher_features = True

    def setup(self, s_info, t_info) -> None:
        if t_info is None:
            raise ConfigError("tinybert needs a teacher")
        s, t = layout(s_info, self.name), layout(t_info, self.name)
        teacher = self.cfg.teacher or self.teacher_names[0]
        self.heads = head_count(self.networks["student"])
        t_heads = head_count(self.teacher_modules[teacher])
        pairs = check_map(self.cfg.layer_map, s, t, self.name)
        if self.cfg.layer_map is None:
            pairs = [(0, 0), *pairs]
        self.hidden_pairs = [(s.hidden(a), t.hidden(b), a == 0) for a, b in pairs]
        self.attention_pairs = []
        if self.cfg.attention_weight > 0:
            if t_heads != self.heads:
                raise ConfigError(f"tinybert matches attention head by head: the student has {self.heads} heads, the "
                                  f"teacher {t_heads} (set attention_weight: 0, or use minilm, whose relation heads "
                                  "work across head counts)")
            self.attention_pairs = [(s.projection(a, "q"), s.projection(a, "k"), t.projection(b, "q"),
                                     t.projection(b, "k")) for a, b in pairs if a > 0 and b > 0]
        self.student_specs = sorted({p[0] for p in self.hidden_pairs} | {p[i] for p in self.attention_pairs
                                                                          for i in (0, 1)})
        self.teacher_specs = sorted({p[1] for p in self.hidden_pairs} | {p[i] for p in self.attention_pairs
                                                                          for i in (2, 3)})
        self.fit_dense = nn.Linear(s.width, t.width)

    def _intermediate(self, out: Outputs) -> dict[str, Tensor]:
        mask, terms = out.inputs["attention_mask"], {}
        sf, tf = out.s_feats, out.t_feats
        for name, weight, embeddings in (("hidden", self.cfg.hidden_weight, False),
                                         ("embedding", self.cfg.embedding_weight, True)):
            pairs = [(a, b) for a, b, e in self.hidden_pairs if e == embeddings]
            if pairs and weight:  # a term at weight 0 is not computed
                terms[name] = weight * sum(masked_mse(self.fit_dense(sf[a]), tf[b].detach(), mask) for a, b in pairs)
        if self.attention_pairs:
            att = [attention_mse(attention_scores(sf[sq], sf[sk], self.heads),
                                 attention_scores(tf[tq].detach(), tf[tk].detach(), self.heads), mask)
                   for sq, sk, tq, tk in self.attention_pairs]
            terms["attention"] = self.cfg.attention_weight * sum(att)
        return terms

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        return self._intermediate(out)

    def ce_weight(self) -> float:
        return self.cfg.label_weight

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        terms = self._intermediate(out) if self.cfg.main_intermediate else {}
        if self.cfg.prediction_weight:
            terms["prediction"] = self.cfg.prediction_weight * soft_cross_entropy(
                out.s_logits, out.t_logits_mean.detach(), self.cfg.temperature)
        return terms
