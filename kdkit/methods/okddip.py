"""Chen, Mei, Wang, Feng & Chen, "Online Knowledge Distillation with Diverse Peers", AAAI 2020 (OKDDip)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Method, MethodConfig, Outputs, register_method
from .one import one_kl, sigmoid_rampup


def peer_targets(logits: Tensor, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Attention-weighted targets of the peers: ``logits`` ``[B, K, m]`` (peer ``i``'s logits in column
    ``i``), ``queries``/``keys`` ``[B, m, d]``. Returns the targets ``[B, K, m]`` (column ``i``:
    ``sum_j a_ij z_j``) and the attention ``a = softmax_j(q_i . k_j)`` ``[B, m, m]``. Nothing is
    detached: the attention is trained only through the targets."""
    attention = torch.bmm(queries, keys.transpose(1, 2)).softmax(-1)
    return torch.bmm(logits, attention.transpose(1, 2)), attention


@dataclass
class OKDDipConfig(MethodConfig):
    temperature: float = 3.0  # the authors' code
    rampup_epochs: int = 80  # the distillation weight rises over these epochs (the authors' code: 80 of 300)
    factor: int = 8  # the attention projections map C features to C // factor (the authors' code)
    alpha: float = 1.0  # weight of the distillation terms (the authors' code: 1)

    def validate(self) -> None:
        if self.temperature <= 0 or self.rampup_epochs < 0 or self.factor < 1 or self.alpha < 0:
            raise ValueError("temperature must be > 0, rampup_epochs >= 0, factor >= 1 and alpha >= 0")


@register_method
class OKDDip(Method):
    """Online distillation with diverse peers. The student is a branched network (model transform
    ``{name: branch, at: <stage>, n: 4}``): a shared trunk, ``m - 1`` auxiliary peers and, as the last
    branch, the group leader. Each peer ``i`` has its own target, the attention-weighted sum of the peers'
    logits ``t_i = sum_j a_ij z_j`` with ``a_ij = softmax_j(q_i . k_j)``, where ``q_i = W_q h_i`` and
    ``k_j = W_k h_j`` are shared linear projections (``C -> C/8``, no bias) of each peer's pooled
    features ``h`` (the input of its classifier): two-level distillation,

        ``L = sum_i CE(z_i) + CE(z_l) + alpha * w(e) * [sum_i T^2 KL(t_i || z_i) + T^2 KL(mean_i z_i || z_l)]``

    at T=3, with ``w(e)`` ONE's sigmoid ramp over the first 80 epochs. As the authors' code
    (``DefangChen/OKDDip``, ``train_GL.py``) and unlike what a reader of the paper may expect: the
    targets are not detached (the attention projections learn only through them, and the leader's target
    passes gradient back to the peers); the peers' targets include each peer itself; the leader is
    trained in the same step as the peers (the "second level" of distillation, not a second training
    stage); and ``1e-7`` is added to the target probabilities. The network's output (the mean of all
    branches) gets no separate label loss. Deploy the leader: ``kdkit export --branch <m-1>``."""

    name = "okddip"
    family = "online"
    paper = "Chen et al. 2020, Online Knowledge Distillation with Diverse Peers"
    Config = OKDDipConfig
    needs_teacher = False
    student_transform = {"name": "branch", "n": 4}  # 3 peers and the leader, split before the last stage

    def setup(self, s_info, t_info) -> None:
        heads = sorted((p for p in s_info.layers if p.count(".") == 1 and p.startswith("heads.")),
                       key=lambda p: int(p.split(".")[1]))
        if len(heads) < 3 or any(p.startswith(h + ".heads.") for p in s_info.layers for h in heads):
            raise ConfigError("okddip needs a student with one split into at least three branches (two peers and "
                              "the leader): model: {name: ..., transforms: [{name: branch, at: <module path>, n: 4}]}")
        embeds = []
        for h in heads:
            linears = [i for i in s_info.layers.values() if i.path.startswith(h + ".") and i.type == "Linear"]
            if not linears or linears[-1].in_shape is None:
                raise ConfigError(f"okddip: branch '{h}' has no linear classifier whose input could be attended")
            last = max(linears, key=lambda i: i.order)
            embeds.append(f"{last.path}:input")
        channels = {s_info.shape(e)[0] for e in embeds[:-1]}
        if len(channels) != 1 or any(len(s_info.shape(e)) != 1 for e in embeds[:-1]):
            raise ConfigError(f"okddip: the peers' classifier inputs must be vectors of one size, got "
                              f"{[s_info.shape(e) for e in embeds[:-1]]}")
        c = channels.pop()
        self.query = nn.Linear(c, max(1, c // self.cfg.factor), bias=False)
        self.key = nn.Linear(c, max(1, c // self.cfg.factor), bias=False)
        self.heads, self.embeds = heads, embeds[:-1]
        self.student_specs = heads + self.embeds

    def ce_weight(self) -> float:
        return 0.0  # every branch has its own label loss; the branches' mean has none

    def deployed(self) -> str:
        return f"branch{len(self.heads) - 1}/"  # the group leader

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        t, w = self.cfg.temperature, self.cfg.alpha * sigmoid_rampup(out.epoch, self.cfg.rampup_epochs)
        z = [out.s_feats[h].float() for h in self.heads]
        peers, leader = z[:-1], z[-1]
        h = torch.stack([out.s_feats[e].float() for e in self.embeds], 1)  # [B, m, C]
        targets, _ = peer_targets(torch.stack(peers, 2), self.query(h), self.key(h))
        terms = {f"okddip/ce{i}": F.cross_entropy(zi, out.targets) for i, zi in enumerate(z)}
        for i, zi in enumerate(peers):
            terms[f"okddip/kl{i}"] = w * one_kl(zi, targets[:, :, i], t, detach=False)
        terms["okddip/leader"] = w * one_kl(leader, torch.stack(peers).mean(0), t, detach=False)
        return terms
