"""A worked example of a new task: classification whose checkpoint is chosen on calibration.

It keeps classification's loss and batches but evaluates the expected calibration error (ECE, Guo et
al., "On Calibration of Modern Neural Networks", ICML 2017: the confidence-weighted gap between
confidence and accuracy over 15 equal-width confidence bins) next to top-1, and picks ``best.pt`` on the
lowest validation ECE. A segmentation or detection task is the same kind of file with its own loss,
batch split and counts.

    kdkit --plugin examples/calibrated_task.py train my_config.yaml     # with task: calibrated_classification
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdkit.tasks import Classification, register_task

BINS = 15


@register_task
class CalibratedClassification(Classification):
    name = "calibrated_classification"
    primary = "ece"
    higher_is_better = False
    # classification's counts, then per confidence bin: samples, summed confidence, correct predictions
    counts = Classification.counts + tuple(f"bin{b}.{k}" for b in range(BINS) for k in ("n", "conf", "hit"))

    def eval_counts(self, output: Tensor, target: Tensor, teacher_output: Tensor | None) -> Tensor:
        base = super().eval_counts(output, target, teacher_output)
        conf, pred = output.float().softmax(1).max(1)
        bins = (conf * BINS).long().clamp(max=BINS - 1)
        per_bin = torch.zeros(BINS, 3, dtype=torch.float64, device=output.device)
        per_bin[:, 0].index_add_(0, bins, torch.ones_like(conf, dtype=torch.float64))
        per_bin[:, 1].index_add_(0, bins, conf.double())
        per_bin[:, 2].index_add_(0, bins, (pred == target).double())
        return torch.cat([base, per_bin.flatten()])

    def metrics(self, counts: list[float], with_teacher: bool) -> dict[str, float]:
        k = len(Classification.counts)
        out = super().metrics(counts[:k], with_teacher)
        n = max(counts[0], 1)
        bins = [counts[k + 3 * b: k + 3 * b + 3] for b in range(BINS)]
        out["ece"] = 100.0 * sum(abs(conf - hit) for _, conf, hit in bins) / n
        return out
