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


@dataclass
class DMLConfig(MethodConfig):
    temperature: float = 1.0  # the paper's plain softmax
    networks: list[str] | None = None  # the cohort: default the student and every peer

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class DML(Method):
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

    def setup(self, s_info, t_info) -> None:
        nets = self.cfg.networks
        if nets is not None:
            unknown = [n for n in nets if n not in self.infos or n.startswith("teacher")]
            if len(nets) < 2 or unknown:
                raise ConfigError(f"dml: 'networks' needs at least two trainable networks of the run, got {nets}")

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        cohort = self.cfg.networks or ["student", *out.peers]
        terms = mutual_kl({n: out.logits[n] for n in cohort}, self.cfg.temperature)
        return {("dml" if n == "student" else f"dml/{n}"): v for n, v in terms.items()}
