"""A worked example of an online method on peers: two-network mutual learning (after Zhang et al.,
"Deep Mutual Learning", CVPR 2018), written against kdkit's extension points only.

The student and one peer train together from scratch; each is pulled, besides its label loss, towards
the other's (detached) soft predictions. It is the architecture's example, not kdkit's DML method (that
one, with cohorts of any size, comes with the training schemes).

    kdkit --plugin examples/toy_mutual.py train my_config.yaml     # with method: toy_mutual, peers: [...]
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdkit.losses import kd_loss, soft_targets
from kdkit.methods import Method, MethodConfig, Outputs, register_method


@dataclass
class ToyMutualConfig(MethodConfig):
    temperature: float = 1.0

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class ToyMutual(Method):
    """Each of the student and the first peer: ``KL(p_other || p_self)`` at temperature T (T^2-scaled),
    the other network's prediction detached."""

    name = "toy_mutual"
    family = "online"
    paper = "Zhang et al. 2018, Deep Mutual Learning (the architecture's two-network example)"
    Config = ToyMutualConfig
    needs_teacher = False
    needs_peers = 1  # the Distiller refuses a run without a peer

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        peer = next(iter(out.peers))  # the first peer's network name
        s, p, t = out.logits["student"], out.logits[peer], self.cfg.temperature
        return {"mutual": kd_loss(s, soft_targets([p], t), t),
                f"mutual/{peer}": kd_loss(p, soft_targets([s], t), t)}  # soft_targets detaches the other
