"""Tian et al., "Contrastive Representation Distillation", ICLR 2020."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import gather_batches
from ..errors import ConfigError
from ..features import ModelInfo
from ..losses.contrastive import info_nce
from .base import EmbeddingConfig, EmbeddingMethod, Outputs, register_method


class Embed(nn.Module):
    """Linear projection of flattened features to ``dim``, L2-normalised."""

    def __init__(self, d_in: int, dim: int):
        super().__init__()
        self.fc = nn.Linear(d_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.fc(x.flatten(1).float()), dim=1)


@dataclass
class CRDConfig(EmbeddingConfig):
    feat_dim: int = 128
    temperature: float = 0.07
    negatives: int = 16384  # queue length, or negatives drawn per step from the bank
    memory: Literal["queue", "bank"] = "queue"
    momentum: float = 0.5  # bank update momentum
    beta: float = 0.8

    def validate(self) -> None:
        if self.negatives < 1 or self.feat_dim < 1:
            raise ValueError("negatives and feat_dim must be >= 1")


@register_method
class CRD(EmbeddingMethod):
    """Contrastive representation distillation: the student's embedding of an image must identify the
    teacher's embedding of the same image among many others, and vice versa (both directions).

    Embeddings are linear projections (trained) of each model's penultimate features to ``feat_dim``,
    L2-normalised; the objective is the softmax (InfoNCE) form of the contrastive loss at temperature
    0.07 with 16384 negatives, ``L = CE + beta * (NCE(s | t, T-negatives) + NCE(t | s, S-negatives))``.
    The paper uses an NCE estimate over a memory bank with one entry per training image (memory that grows
    with the dataset). ``memory: queue`` (default) instead keeps fixed-size FIFO queues of recent
    embeddings (memory independent of the dataset size); ``memory: bank`` is the paper's dataset-sized
    bank with momentum 0.5 updates, which needs sample indices (a declared capability). beta=0.8 is the
    CRD CIFAR-100 setting. Queues and banks are buffers: saved in checkpoints, resumed exactly. Under
    data-parallel training each rank enqueues the embeddings (and indices) of the whole global batch,
    gathered across ranks, so every rank holds the same memory as one process on the whole batch.
    """

    name = "crd"
    family = "contrastive"
    temperature_range = None  # InfoNCE's temperature (0.07 in the paper), not a softening one
    paper = "Tian et al. 2020, Contrastive Representation Distillation"
    Config = CRDConfig

    def __init__(self, cfg: CRDConfig | None = None):
        super().__init__(cfg)
        self.needs_sample_index = self.cfg.memory == "bank"
        self._pending: tuple[Tensor, ...] | None = None  # this step's embeddings, enqueued in after_step

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        super().setup(s_info, t_info)
        c = self.cfg
        d_s = int(torch.tensor(s_info.shape(self.student_specs[0])).prod())
        d_t = int(torch.tensor(t_info.shape(self.teacher_specs[0])).prod())
        self.embed_s, self.embed_t = Embed(d_s, c.feat_dim), Embed(d_t, c.feat_dim)
        if c.memory == "bank":
            if not self.num_samples:
                raise ConfigError("crd with memory: bank needs the training-set size (num_samples)")
            size = self.num_samples
        else:
            size = c.negatives
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mem_s", F.normalize(torch.randn(size, c.feat_dim, generator=g), dim=1))
        self.register_buffer("mem_t", F.normalize(torch.randn(size, c.feat_dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def _negatives(self, mem: Tensor, index: Tensor | None) -> Tensor:
        if self.cfg.memory == "queue":
            return mem
        k = min(self.cfg.negatives, len(mem))
        draw = torch.randint(0, len(mem), (len(index), k), device=mem.device)
        return mem[draw]  # [B, K, D]; a positive drawn by chance is rare and harmless at this K/N

    def after_step(self) -> None:
        """Enqueue this step's embeddings; under DDP every rank enqueues the whole global batch (gathered
        across ranks), so the memories stay equal."""
        pending, self._pending = self._pending, None
        if pending is not None:
            gathered = gather_batches(*pending)
            self._update(gathered[0], gathered[1], gathered[2] if len(gathered) > 2 else None)

    @torch.no_grad()
    def _update(self, e_s: Tensor, e_t: Tensor, index: Tensor | None) -> None:
        # out of place: this step's graph still holds the old memory for its backward pass
        if self.cfg.memory == "bank":
            m = self.cfg.momentum
            rows = index.to(self.mem_s.device)
            new_s = F.normalize(m * self.mem_s[rows] + (1 - m) * e_s, dim=1)
            new_t = F.normalize(m * self.mem_t[rows] + (1 - m) * e_t, dim=1)
        else:
            rows = (self.ptr + torch.arange(len(e_s), device=e_s.device)) % len(self.mem_s)
            new_s, new_t = e_s, e_t
            self.ptr = (self.ptr + len(e_s)) % len(self.mem_s)
        self.mem_s = self.mem_s.index_copy(0, rows, new_s.to(self.mem_s.dtype))
        self.mem_t = self.mem_t.index_copy(0, rows, new_t.to(self.mem_t.dtype))

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        if self.needs_sample_index and out.index is None:
            raise ConfigError("crd with memory: bank needs sample indices from the data loader")
        f_s, f_t = self.embeddings(out)
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_t.detach())
        t = self.cfg.temperature
        loss = info_nce(e_s, e_t, self._negatives(self.mem_t, out.index), t) + info_nce(
            e_t, e_s, self._negatives(self.mem_s, out.index), t)
        if self.training:  # enqueued after the optimiser step (after_step)
            self._pending = (e_s.detach(), e_t.detach()) + (
                (out.index.to(e_s.device),) if out.index is not None else ())
        return {"crd": self.cfg.beta * loss}
