"""Image (and any input) classification, the first task."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Task, register_task


@register_task
class Classification(Task):
    """Image classification: label cross-entropy; top-1/top-5 accuracy, mean loss and (with teachers)
    agreement of the prediction with the teachers' mean-logit prediction; best.pt on top-1; the cache may
    keep each sample's ``k`` largest logits and the log-mean-exp of the rest."""

    name = "classification"
    primary = "top1"
    counts = ("n", "top1", "top5", "loss", "agreement")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target)

    def eval_counts(self, output: Tensor, target: Tensor, teacher_output: Tensor | None) -> Tensor:
        output = output.float()
        pred = output.topk(min(5, output.shape[1]), dim=1).indices
        return torch.stack([
            torch.tensor(float(len(target)), device=output.device),
            (pred[:, 0] == target).sum().float(),
            (pred == target[:, None]).any(1).sum().float(),
            F.cross_entropy(output, target, reduction="sum"),
            (teacher_output.argmax(1) == pred[:, 0]).sum().float() if teacher_output is not None
            else output.new_zeros(()),
        ]).double()

    def metrics(self, counts: list[float], with_teacher: bool) -> dict[str, float]:
        n, top1, top5, loss, agree = counts
        n = max(n, 1)
        out = {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n}
        if with_teacher:
            out["agreement"] = 100.0 * agree / n
        return out

    def compress_output(self, output: Tensor, k: int | None) -> dict[str, Tensor]:
        if k is None or k >= output.shape[1]:
            return {"": output}
        output = output.float()
        values, indices = output.topk(k, dim=1)
        rest = output.scatter(1, indices, float("-inf")).logsumexp(1) - math.log(output.shape[1] - k)
        return {".values": values, ".indices": indices.to(torch.int32), ".rest": rest}

    def expand_output(self, parts: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
        if "" in parts:
            return parts[""].float()
        values, indices, rest = parts[".values"].float(), parts[".indices"].long(), parts[".rest"]
        out = rest[:, None].expand(len(rest), meta["num_classes"]).clone()
        return out.scatter(1, indices, values)

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        if shape != (dataset.num_classes,):
            got = "no tensor" if shape is None else f"outputs of shape {list(shape)} per image"
            raise ConfigError(f"{network} gives {got}, but {dataset.name} has {dataset.num_classes} classes: "
                              f"its logits must be [batch, {dataset.num_classes}] (a model that does not take "
                              "num_classes gets its head size from model.kwargs; model.output picks the logits "
                              "of a tuple, dict or output object)")
