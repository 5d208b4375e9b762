"""Balance hints: how much of the gradient on the student's parameters each loss term gives, measured
over the first steps of a run, and a warning when one term's gradient outweighs every other by more than a
set factor (a hint weight 100 times too large, a label loss scaled away). What is measured is the L2 norm
of each term's own gradient over all the student's trainable parameters, ``||d term / d theta_student||``,
taken with ``torch.autograd.grad`` on the step's graph before the step's own backward (the update is not
changed; each probed step costs one extra backward pass per term). Terms whose gradient does not reach
the student (a peer's label loss in mutual learning, a regressor's own term) are listed with norm 0 and
are not compared."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

PREFIX = "grad_share/"  # the metrics keys: grad_share/<term> (fraction), grad_share/dominance (ratio)


@dataclass
class BalanceProbe:
    """Accumulates per-term gradient norms over ``steps`` steps; :meth:`summary` gives the shares."""

    params: list[nn.Parameter]
    steps: int
    factor: float
    norms: dict[str, float] = field(default_factory=dict)
    seen: int = 0

    @property
    def active(self) -> bool:
        return self.seen < self.steps and bool(self.params)

    def measure(self, terms: dict[str, Tensor]) -> None:
        """Adds each term's gradient norm on the student's parameters (the graph is kept for the step)."""
        params = [p for p in self.params if p.requires_grad]  # a stage may have frozen some
        for name, value in terms.items():
            norm = 0.0
            if value.requires_grad and params:
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
                norm = math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0
            self.norms[name] = self.norms.get(name, 0.0) + norm
        self.seen += 1

    def summary(self) -> dict[str, float]:
        """``grad_share/<term>``: each term's share of the summed mean norms; ``grad_share/dominance``: the
        largest norm over the second largest among the terms that reach the student (1.0 when fewer than
        two do)."""
        total = sum(self.norms.values())
        if not self.seen or total <= 0:
            return {}
        out = {f"{PREFIX}{k}": v / total for k, v in self.norms.items()}
        reaching = sorted((v for v in self.norms.values() if v > 0), reverse=True)
        out[f"{PREFIX}dominance"] = reaching[0] / reaching[1] if len(reaching) > 1 else 1.0
        return out

    def message(self, summary: dict[str, float]) -> tuple[str, str | None]:
        """The log line, and a warning when one term dominates by more than ``factor``."""
        shares = {k[len(PREFIX):]: v for k, v in summary.items() if k != f"{PREFIX}dominance"}
        line = (f"gradient share on the student over the first {self.seen} steps: "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
        dom = summary.get(f"{PREFIX}dominance", 1.0)
        if dom <= self.factor:
            return line, None
        top = max(shares, key=shares.get)
        return line, (f"loss term '{top}' gives {dom:.1f}x the gradient on the student of any other term "
                      f"(over {self.factor:g}x, train.balance_factor): the other terms barely train it; "
                      "check the methods' weights")

    def finish(self, log: Callable[[str], None]) -> dict[str, float]:
        """The shares, logged once with the warning if any; the probe measures nothing after this."""
        summary = self.summary()
        if summary:
            line, warning = self.message(summary)
            log(line)
            if warning:
                warnings.warn(warning, stacklevel=3)
        self.params, self.steps, self.seen, self.norms = [], 0, 0, {}
        return summary
