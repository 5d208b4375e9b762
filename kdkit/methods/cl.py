"""Song & Chai, "Collaborative Learning for Deep Neural Networks", NeurIPS 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses import kd_loss
from .base import Method, MethodConfig, Outputs, register_method


def collaborative_targets(logits: list[Tensor], temperature: float, target: str = "logits") -> list[Tensor]:
    """For each head ``h``, detached: ``softmax(mean_{j != h} z_j / T)`` (``target="logits"``, the paper's
    consensus), or the mean of the other heads' ``softmax(z_j / T)`` (``target="probs"``)."""
    zs = [z.detach().float() for z in logits]
    if target == "logits":
        total = torch.stack(zs).sum(0)
        return [F.softmax((total - z) / (len(zs) - 1) / temperature, dim=1) for z in zs]
    probs = [F.softmax(z / temperature, dim=1) for z in zs]
    total = torch.stack(probs).sum(0)
    return [(total - p) / (len(probs) - 1) for p in probs]


@dataclass
class CLConfig(MethodConfig):
    temperature: float = 2.0
    beta: float = 0.5  # weight of the label loss; 1 - beta on the soft targets
    target: str = "logits"  # the other heads' mean logits, softened; "probs": their mean soft prediction
    t_squared: bool = False  # multiply the soft term by T^2 as Hinton's KD does (the paper does not)

    def validate(self) -> None:
        if self.temperature <= 0 or not 0.0 <= self.beta <= 1.0:
            raise ValueError("temperature must be > 0 and beta in [0, 1]")
        if self.target not in ("logits", "probs"):
            raise ValueError(f"target must be 'logits' or 'probs', got {self.target!r}")


@register_method
class CL(Method):
    """Collaborative learning: the student is a tree of classifier heads sharing intermediate layers
    (model transform ``{name: branch, at: [a, b], n: [2, 2], rescale: true}``: the gradient reaching each
    shared layer from its heads is scaled by ``1/n``, "backpropagation rescaling"). Each head ``h`` is
    trained on ``beta * CE(y, z_h) + (1 - beta) * CE(q_h, softmax(z_h / T))`` (the soft term is logged as
    the KL divergence, which differs from that cross-entropy by a constant and has the same gradient), with
    the consensus target ``q_h = softmax(mean_{j != h} z_j / T)`` held constant (no gradient flows through
    it). The network's output (the heads' mean) gets no separate label loss. One head is deployed
    (``kdkit export --branch k``). Defaults T=2, beta=0.5.

    How this was settled: the authors released no code, and the paper's full text could not be read from
    this project's machines (only its abstract). The formula above is the one in the public
    reimplementation that uses the paper's notation (q, beta, T; github.com/qq456cvb/Collaborative-Learning):
    the softmax of the other heads' averaged logits, the soft cross-entropy without a T^2 factor, T=2,
    beta=0.5; its README names letting gradients pass through q as its one departure from the paper, and
    its current code stops them. Both public reimplementations compared in issue 25 average logits and
    leave out T^2. Until issue 25 kdkit averaged the heads' probabilities and multiplied by T^2;
    ``target: probs, t_squared: true`` gives that back."""

    name = "cl"
    family = "online"
    paper = "Song & Chai 2018, Collaborative Learning for Deep Neural Networks"
    Config = CLConfig
    needs_teacher = False
    student_transform = {"name": "branch", "n": [2, 2], "rescale": True}  # before the last two stages

    def setup(self, s_info, t_info) -> None:
        leaves = [p for p in s_info.layers if p.startswith("heads.") and p.rsplit(".", 2)[-2] == "heads"
                  and not any(q.startswith(p + ".heads.") for q in s_info.layers)]
        if len(leaves) < 2:
            raise ConfigError("cl needs a student with at least two heads: model: {name: ..., transforms: "
                              "[{name: branch, at: [<path>, <path>], n: [2, 2], rescale: true}]}")
        self.student_specs = sorted(leaves)

    def ce_weight(self) -> float:
        return 0.0  # each head has its own label loss; the mean of the heads has none

    def deployed(self) -> str:
        return "branch0/"  # one head (trunk + its branch of the tree)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        t, beta = self.cfg.temperature, self.cfg.beta
        logits = [out.s_feats[s] for s in self.student_specs]
        terms = {}
        scale = 1.0 if self.cfg.t_squared else 1.0 / t**2  # kd_loss carries T^2
        for k, (z, q) in enumerate(zip(logits, collaborative_targets(logits, t, self.cfg.target))):
            terms[f"cl/ce{k}"] = beta * F.cross_entropy(z.float(), out.targets)
            terms[f"cl/kd{k}"] = (1 - beta) * scale * kd_loss(z, q, t)
        return terms
