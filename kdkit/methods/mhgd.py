"""Lee & Song, "Graph-based Knowledge Distillation by Multi-head Attention Network", BMVC 2019 (the
authors' code is TensorFlow: sseung0703/KD_methods_with_TF, ``nets/Relation.py`` ``MHGD`` and
``op_util.py`` ``Optimizer_w_MHGD``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import align_singular_vectors, attention_graph_kl, top_singular_vectors
from .base import LayerPairsConfig, LayerPairsMethod, Outputs, register_method


@dataclass
class MHGDConfig(LayerPairsConfig):
    beta: float = 1.0  # the transfer term (see the class docstring: the authors clip its gradient instead)
    heads: int = 8  # the authors' num_head
    stage1_epochs: int = 10  # the attention and estimator trained on the teacher (the authors: 40 of 140)

    def validate(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 1 <= self.heads <= 64:
            raise ValueError(f"heads must be in [1, 64], got {self.heads}")


class AttentionHead(nn.Module):
    """Multi-head attention logits between the samples of a batch: ``G[h, i, j] = f_h(v_i) . g_h(u_j)``
    where ``v`` are one layer's vectors (the senders), ``u`` the previous layer's (the receivers), and
    ``f``, ``g`` are a linear map to ``width * heads`` (no bias) with batch norm."""

    def __init__(self, d_now: int, d_prev: int, width: int, heads: int):
        super().__init__()
        self.width, self.heads = width, heads
        self.sender = nn.Sequential(nn.Linear(d_now, width * heads, bias=False), nn.BatchNorm1d(width * heads))
        self.receiver = nn.Sequential(nn.Linear(d_prev, width * heads, bias=False), nn.BatchNorm1d(width * heads))

    def forward(self, v_now: Tensor, v_prev: Tensor) -> Tensor:
        b = v_now.shape[0]
        s = self.sender(v_now).view(b, self.width, self.heads).permute(2, 0, 1)  # [heads, B, width]
        r = self.receiver(v_prev).view(b, self.width, self.heads).permute(2, 1, 0)  # [heads, width, B]
        return s @ r  # [heads, B, B]


class Estimator(nn.Module):
    """Predicts each sample's vector at one layer from the previous layer's vectors of the whole batch,
    aggregated by the softmax of the attention logits (a random half of the heads dropped per sample
    while training); the output is L2-normalised."""

    def __init__(self, d_prev: int, d_now: int, heads: int):
        super().__init__()
        hidden = (d_prev + d_now) // 2
        self.embed = nn.Sequential(nn.Linear(d_prev, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU())
        self.out = nn.Linear(hidden * heads, d_now)
        nn.init.zeros_(self.out.bias)

    def forward(self, v_prev: Tensor, logits: Tensor) -> Tensor:
        heads, b, _ = logits.shape
        g = logits.softmax(-1)
        if self.training:  # the authors' drop_head: keep the heads whose noise is above the heads' mean
            noise = torch.randn(heads, b, 1, device=g.device, dtype=g.dtype)
            g = g * (noise - noise.mean(0, keepdim=True) > 0).to(g.dtype)
        x = (g.reshape(heads * b, b) @ self.embed(v_prev)).view(heads, b, -1)
        return F.normalize(self.out(x.transpose(0, 1).reshape(b, -1)), dim=-1)


@register_method
class MHGD(LayerPairsMethod):
    """Graph distillation by multi-head attention. Each layer's feature map (the stages, pooled to the
    smallest stage resolution) is compressed to one vector per sample, its top right singular vector over
    the spatial positions (:func:`~kdkit.losses.top_singular_vectors`; the student's is the one of its
    top 4 most aligned with the teacher's, sign fixed, as in KD-SVD). Between consecutive layers a
    multi-head attention (``heads`` 8) relates the samples of the batch: ``G[h, i, j]`` from layer l's
    vector of sample i and layer l-1's of sample j.

    Stage 1 (``stage1_epochs``; the student is not trained): on the teacher's vectors, the attention and an
    estimator that predicts layer l's vector of each sample from layer l-1's vectors aggregated by
    ``softmax(G)`` (heads dropped at random) are trained on ``mean(1 - cos)``. Stage 2: the attention is
    frozen (eval mode), and the student's graphs are pulled to the teacher's:
    ``beta * sum_l sum_h mean_i KL(softmax(tanh G_S[h, i]) || softmax(tanh G_T[h, i]))`` (the KL from the
    student's distribution, as the authors' ``kld_loss(G_S, G_T)``), beside the cross-entropy.

    Deliberate differences from the authors' code: their singular vectors run over channels (the student
    and teacher must then be as wide as each other); here over the spatial positions of maps pooled to a
    common size, so any pair works and the attention applies to both networks. Their KL is summed over
    the batch and the heads and its gradient clipped, tensor by tensor, to the norm of the cross-entropy's
    gradient (ramped by a sigmoid of the epoch); here it is averaged over the batch, summed over heads, and
    ``beta`` sets its weight (the sweep chooses it). Their first stage is 40 of 140 epochs; 10 here."""

    name = "mhgd"
    family = "relation"
    paper = "Lee & Song 2019, Graph-based Knowledge Distillation by Multi-head Attention Network"
    Config = MHGDConfig
    relates_consecutive_layers = True
    needs_maps = "its vectors are singular vectors of [C, H*W] maps"

    def build(self, s_info, t_info) -> None:
        shapes = [t_info.shape(t) for t in self.teacher_specs] + [s_info.shape(s) for s in self.student_specs]
        hw = min(min(s[1:]) for s in shapes)
        self.hw, d = hw, hw * hw  # every vector lives over the same pooled positions
        pairs = len(self.teacher_specs) - 1
        self.attention = nn.ModuleList(AttentionHead(d, d, d, self.cfg.heads) for _ in range(pairs))
        self.estimator = nn.ModuleList(Estimator(d, d, self.cfg.heads) for _ in range(pairs))

    def _vectors(self, feats: list[Tensor], reference: list[Tensor] | None = None) -> list[Tensor]:
        """One unit vector per sample and layer ``[B, hw*hw]``; the student's aligned to ``reference``."""
        out = []
        for i, f in enumerate(feats):
            f = F.adaptive_avg_pool2d(f, self.hw)
            if reference is None:
                v, _ = top_singular_vectors(f, 1)
            else:
                cand = top_singular_vectors(f, 4)[0]
                v = align_singular_vectors(cand, reference[i].to(cand.dtype).unsqueeze(1))
            out.append(v[:, 0].float())
        return out

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        with torch.no_grad():
            v_t = self._vectors([out.t_feats[t] for t in self.teacher_specs])
        loss = sum((1 - (est(prev, att(now, prev)) * now).sum(-1)).mean()
                   for att, est, prev, now in zip(self.attention, self.estimator, v_t, v_t[1:]))
        return {"mhgd_estimator": loss}

    def frozen(self, objective: str) -> list[str]:
        return ["attention", "estimator"] if objective == "main" else []

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        with torch.no_grad():
            v_t = self._vectors([out.t_feats[t].detach() for t in self.teacher_specs])
        v_s = self._vectors([out.s_feats[s] for s in self.student_specs], v_t)
        total = 0.0
        for att, prev_s, now_s, prev_t, now_t in zip(self.attention, v_s, v_s[1:], v_t, v_t[1:]):
            with torch.no_grad():
                g_t = att(now_t, prev_t)
            total = total + attention_graph_kl(att(now_s, prev_s), g_t)
        return {"mhgd": self.cfg.beta * total}
