"""Text classification: one class for a sequence of tokens.

A batch's inputs are ``input_ids`` and ``attention_mask`` (``[B, T]``, :mod:`kdkit.data.text`), given to
the network as keywords; its output is logits ``[B, K]`` (a Hugging Face model's output object is read by
its ``logits``). Padding is the network's business for the logits (the attention mask keeps it out of
every token's context); the distillation methods that read tokens (hidden states, attentions) mask it
themselves.

Evaluation sums a K x K confusion matrix (rows: true class, columns: predicted) over batches and ranks, and
reports accuracy (the primary metric), macro-F1 (the mean F1 of the classes that occur in the targets or
the predictions, as scikit-learn's ``f1_score(average="macro")``), the mean loss and, with teachers, the
agreement of the prediction with the teachers' mean-logit prediction, all in %.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import register_task
from .classification import Classification
from .segmentation import confusion_matrix


def macro_f1(conf: Tensor) -> float:
    """Mean F1 ``2 tp / (2 tp + fp + fn)`` over the classes present in the targets or predictions of a
    confusion matrix (rows: true class); NaN when it is empty."""
    conf = conf.double()
    tp = conf.diagonal()
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    present = (conf.sum(0) + conf.sum(1)) > 0
    if not present.any():
        return math.nan
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1e-12)
    return float(f1[present].mean())


@register_task
class TextClassification(Classification):
    """Cross-entropy on sequence logits; accuracy, macro-F1, loss and agreement; best.pt on accuracy. The
    teacher cache stores logits as for images."""

    name = "text_classification"
    primary = "accuracy"
    counts = ("n", "correct", "loss", "agreement")  # then the K x K confusion matrix, row-major
    num_classes: int | None = None  # known once a dataset was seen (record, check_output)

    def __init__(self) -> None:  # token ids: no PGD option
        super().__init__()
    unit = "tokens"

    def units(self, inputs: Any) -> Tensor | None:
        """The batch's real tokens (its attention mask's ones; padding not counted)."""
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        return mask.sum() if isinstance(mask, Tensor) else None

    def eval_counts(self, output: Tensor, target: Tensor, teacher_output: Tensor | None) -> Tensor:
        output = output.float()
        k = output.shape[1]
        pred = output.argmax(1)
        conf = confusion_matrix(pred, target, k).flatten().float()
        head = torch.stack([
            torch.tensor(float(len(target)), device=output.device),
            (pred == target).sum().float(),
            F.cross_entropy(output, target, reduction="sum"),
            (teacher_output.argmax(1) == pred).sum().float() if teacher_output is not None else output.new_zeros(()),
        ])
        return torch.cat([head, conf]).double()

    def empty_counts(self) -> Tensor:
        return torch.zeros(len(self.counts) + (self.num_classes or 0) ** 2, dtype=torch.float64)

    def metrics(self, counts: list[float], with_teacher: bool) -> dict[str, float]:
        n, correct, loss, agree, *flat = counts
        k = math.isqrt(len(flat))
        n = max(n, 1.0)
        out = {"accuracy": 100.0 * correct / n,
               "macro_f1": 100.0 * macro_f1(torch.tensor(flat, dtype=torch.float64).reshape(k, k)),
               "loss": loss / n}
        if with_teacher:
            out["agreement"] = 100.0 * agree / n
        return out

    def record(self, dataset) -> dict[str, Any]:
        self.num_classes = dataset.num_classes
        return super().record(dataset)

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        self.num_classes = dataset.num_classes
        super().check_output(shape, dataset, network)
