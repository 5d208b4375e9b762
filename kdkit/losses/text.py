"""Losses of transformer distillation on token sequences, pure tensor functions.

Every function takes the attention mask ``[B, T]`` (1: a real token, 0: padding) and lets no padded
position count: a padded token's hidden state, a padded query's attention row and a padded key's column
are left out of every mean. Without padding (a mask of ones) each equals the formula of the reference code
named in its docstring.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of hidden states ``[B, T, D]`` over the real tokens (TinyBERT's ``rep_loss``,
    ``MSELoss()`` on the hidden states, Jiao et al. 2020)."""
    m = mask.to(student.dtype)[..., None]
    return ((student.float() - teacher.float()) ** 2 * m).sum() / (m.sum() * student.shape[-1]).clamp_min(1)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``[B, T, H]`` -> ``[B, heads, T, H / heads]``."""
    b, t, h = x.shape
    if h % heads:
        raise ValueError(f"width {h} does not split into {heads} heads")
    return x.reshape(b, t, heads, h // heads).transpose(1, 2)


def attention_scores(query: Tensor, key: Tensor, heads: int) -> Tensor:
    """Pre-softmax attention scores ``Q K^T / sqrt(d_head)``, ``[B, heads, T, T]``, from the query and key
    projections ``[B, T, H]`` (what a BERT layer adds its mask to before the softmax)."""
    q, k = split_heads(query.float(), heads), split_heads(key.float(), heads)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def attention_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of attention scores ``[B, h, T, T]`` over the pairs of real tokens (TinyBERT's
    ``att_loss``: ``MSELoss()`` on the scores, whose masked entries its code sets to 0 in both)."""
    pair = (mask[:, None, :, None] * mask[:, None, None, :]).to(student.dtype)
    pair = pair.expand_as(student)
    return ((student - teacher) ** 2 * pair).sum() / pair.sum().clamp_min(1)


def relations(x: Tensor, heads: int, mask: Tensor) -> Tensor:
    """Self-attention relations of MiniLMv2: ``x`` ``[B, T, H]`` (queries, keys or values) split into
    ``heads`` relation heads, ``log softmax(x x^T / sqrt(d_r))`` over the real keys, ``[B, heads, T, T]``."""
    r = split_heads(x.float(), heads)
    scores = r @ r.transpose(-1, -2) / math.sqrt(r.shape[-1])
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return F.log_softmax(scores, dim=-1)


def relation_kl(student: Tensor, teacher: Tensor, heads: int, mask: Tensor) -> Tensor:
    """MiniLMv2's loss for one relation (Wang et al. 2021, eq. 3): ``KL(R_teacher || R_student)`` summed
    over keys and averaged over relation heads and real query tokens. Student and teacher may differ in
    width and head count: both are split into the same number of relation heads."""
    keys = mask[:, None, None, :].bool()
    # padded keys hold -inf: set to 0 before the difference, so that no NaN reaches a gradient
    log_s, log_t = (relations(x, heads, mask).masked_fill(~keys, 0.0) for x in (student, teacher))
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~keys, 0.0).sum(-1)  # [B, heads, T]
    rows = mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp_min(1)


def cosine_hidden(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """DistilBERT's cosine loss (Sanh et al. 2019): ``1 - cos(h_s, h_t)`` averaged over the real tokens
    (its code's ``CosineEmbeddingLoss`` on the hidden states selected by the attention mask)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # [B, T]
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum().clamp_min(1)


def patience(student: Tensor, teacher: Tensor) -> Tensor:
    """Patient KD's loss (Sun et al. 2019, eq. 5 as its code computes it): the mean squared error of the
    L2-normalised [CLS] states, ``[B, layers, H]``."""
    return F.mse_loss(F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1))


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """TinyBERT's prediction-layer loss: ``-sum softmax(z_t / T) * log_softmax(z_s / T)``, batch mean."""
    t = F.softmax(teacher.float() / temperature, dim=-1)
    return -(t * F.log_softmax(student.float() / temperature, dim=-1)).sum(-1).mean()


__all__ = ["attention_mse", "attention_scores", "cosine_hidden", "masked_mse", "patience", "relation_kl",
           "relations", "soft_cross_entropy", "split_heads"]
