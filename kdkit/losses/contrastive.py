"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """InfoNCE / softmax contrastive loss: ``-log exp(a.p/tau) / (exp(a.p/tau) + sum_k exp(a.n_k/tau))``,
    batch mean. ``anchor``, ``positive``: [B, D]; ``negatives``: [K, D] shared by the batch, or [B, K, D]
    per sample. All are expected L2-normalised; ``positive`` and ``negatives`` are detached."""
    pos = (anchor * positive.detach()).sum(1, keepdim=True)
    neg = anchor @ negatives.detach().t() if negatives.dim() == 2 else torch.einsum("bd,bkd->bk", anchor,
                                                                                    negatives.detach())
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))
