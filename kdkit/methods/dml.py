"""Zhang et al., "Deep Mutual Learning", CVPR 2018."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses import kd_loss, soft_targets
from .base import Method, MethodConfig, Outputs, register_method


def mutual_kl(logits: dict[str, Tensor], temperature: float = 1.0) -> dict[str, Tensor]:
    """For each network ``i`` of a cohort: ``1/(N-1) * sum_{j != i} T^2 KL(p_j || p_i)`` with
    ``p = softmax(z / T)``, the other networks' predictions detached (batch mean)."""
    targets = {k: soft_targets([z], temperature) for k, z in logits.items()}  # detached
    return {i: sum(kd_loss(z, targets[j], temperature) for j in logits if j != i) / (len(logits) - 1)
            for i, z in logits.items()}


class CohortMethod(Method):
    """A method over a cohort of trainable networks: ``cfg.networks`` (validated here), by default the
    student and every peer; each network's term is named ``<method>`` (student) or ``<method>/<peer>``."""

    def setup(self, s_info, t_info) -> None:
        nets = self.cfg.networks
        if nets is not None:
            unknown = [n for n in nets if n not in self.networks]
            if len(nets) < 2 or unknown:
                raise ConfigError(f"{self.name}: 'networks' needs at least two trainable networks of the run, "
                                  f"got {nets}")

    def cohort(self, out: Outputs) -> list[str]:
        return self.cfg.networks or ["student", *out.peers]

    def term(self, net: str) -> str:
        return self.name if net == "student" else f"{self.name}/{net}"


@dataclass
class DMLConfig(MethodConfig):
    temperature: float = 1.0  # the paper's plain softmax
    networks: list[str] | None = None  # the cohort: default the student and every peer

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class DML(CohortMethod):
    """Deep mutual learning: a cohort of ``N >= 2`` networks (the student and its ``peers``, any
    architectures) trains together from scratch; each minimises its label cross-entropy (added by the
    trainer for every trainable network) plus ``1/(N-1) sum_{j != i} KL(p_j || p_i)`` (paper eq. (10)),
    the other networks' predictions treated as constants. The paper updates the networks in turn within
    a step; here they are updated together from one forward pass (as most reimplementations do, e.g.
    the MCL-OKD comparison), which costs one forward per network instead of N. Every network is
    evaluated and saved; the student is the one deployed by default."""

    name = "dml"
    family = "online"
    paper = "Zhang et al. 2018, Deep Mutual Learning"
    Config = DMLConfig
    needs_teacher = False
    needs_peers = 1

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        terms = mutual_kl({n: out.logits[n] for n in self.cohort(out)}, self.cfg.temperature)
        return {self.term(n): v for n, v in terms.items()}
