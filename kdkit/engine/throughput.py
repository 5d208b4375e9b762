"""What an epoch's progress bar and metrics say of speed in the task's own unit (text: tokens per second,
padding not counted), counted on the device and read only when the bar is updated; and the epoch's CPU time
(``time/train_cpu_s``: the process's user + system time over all its threads, which neither a paused
process nor other processes' load inflates, unlike the wall time ``time/train_s``)."""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor


class Throughput:
    def __init__(self, task) -> None:
        self.task = task
        self.count: Tensor | None = None  # None: the task counts no unit in these inputs
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def add(self, inputs: Any) -> None:
        n = self.task.units(inputs)
        if n is not None:
            self.count = n if self.count is None else self.count + n

    def rates(self) -> dict[str, float]:
        """``{"<unit>/s": rate}`` so far (empty when the task counts no unit)."""
        if self.count is None:
            return {}
        return {f"{self.task.unit}/s": float(self.count) / max(time.perf_counter() - self.t0, 1e-9)}

    def metrics(self) -> dict[str, float]:
        """``{"time/<unit>_per_s": rate, "time/train_cpu_s": seconds}`` for an epoch's metrics."""
        return {**{f"time/{k.removesuffix('/s')}_per_s": v for k, v in self.rates().items()},
                "time/train_cpu_s": time.process_time() - self.cpu0}


__all__ = ["Throughput"]
