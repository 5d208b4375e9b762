"""Song & Chai, "Collaborative Learning for Deep Neural Networks", NeurIPS 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses import kd_loss
from .base import Method, MethodConfig, Outputs, register_method


def collaborative_targets(logits: list[Tensor], temperature: float) -> list[Tensor]:
    """For each head ``h``: the mean of the other heads' soft predictions ``softmax(z_j / T)``, detached."""
    probs = [F.softmax(z.detach().float() / temperature, dim=1) for z in logits]
    total = torch.stack(probs).sum(0)
    return [(total - p) / (len(probs) - 1) for p in probs]


@dataclass
class CLConfig(MethodConfig):
    temperature: float = 2.0
    beta: float = 0.5  # weight of the label loss; 1 - beta on the soft targets

    def validate(self) -> None:
        if self.temperature <= 0 or not 0.0 <= self.beta <= 1.0:
            raise ValueError("temperature must be > 0 and beta in [0, 1]")


@register_method
class CL(Method):
    """Collaborative learning: the student is a tree of classifier heads sharing intermediate layers
    (model transform ``{name: branch, at: [a, b], n: [2, 2], rescale: true}``: the gradient reaching each
    shared layer from its heads is scaled by ``1/n``, "backpropagation rescaling"). Each head ``h`` is
    trained on ``beta * CE(z_h) + (1 - beta) * T^2 * KL(q_h || softmax(z_h / T))``, where ``q_h`` is the
    mean of the other heads' soft predictions, detached. The network's output (the heads' mean) gets no
    separate label loss. One head is deployed (``kdkit export --branch k``). T=2 and beta=0.5 are the
    values we take from the paper's description; no code was released by the authors, so these and the
    target (mean of probabilities, not of logits) follow the paper text only."""

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
        for k, (z, q) in enumerate(zip(logits, collaborative_targets(logits, t))):
            terms[f"cl/ce{k}"] = beta * F.cross_entropy(z.float(), out.targets)
            terms[f"cl/kd{k}"] = (1 - beta) * kd_loss(z, q, t)
        return terms
