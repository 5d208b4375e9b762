"""Tasks: what is specific to the kind of prediction a run trains (the seam for segmentation, detection
and text tasks, each a new :class:`Task` in a file of its own).

A task says how a batch splits into inputs, targets and sample indices; the supervised loss of a
network's output; what evaluation counts (summable over batches and ranks) and the metrics made from
them, including the one ``best.pt`` is chosen on; the input used to probe a network's shapes; how the
teacher cache may store an output compactly; and what a checkpoint's model record says of the output.
:class:`Classification` is the first (and today the only) task.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import batch as batch_protocol
from .errors import ConfigError
from .registry import Registry


class Task:
    """The interface; subclasses are registered with :func:`register_task`."""

    name: ClassVar[str] = ""
    primary: ClassVar[str] = ""  # the validation metric best.pt is chosen on
    higher_is_better: ClassVar[bool] = True
    counts: ClassVar[tuple[str, ...]] = ()  # names of the summed evaluation counts

    def split_batch(self, batch: Any) -> tuple[Any, Any, Tensor | None]:
        """``(inputs, targets, sample indices)`` of a loader's batch (:mod:`kdkit.batch`: kdkit's
        :class:`~kdkit.batch.Batch`, or a user's ``(inputs, targets)`` pair, which has no indices)."""
        return batch_protocol.split(batch)

    def loss(self, output: Tensor, target: Any) -> Tensor:
        raise NotImplementedError

    def example_input(self, input_shape: Any, device: torch.device) -> Any:
        """What networks are probed on (shapes of every layer): zeros of ``[2, *input_shape]``, or two
        samples of an example batch (:func:`kdkit.batch.example`)."""
        return batch_protocol.example(input_shape, 2, device)

    def eval_counts(self, output: Tensor, target: Any, teacher_output: Tensor | None) -> Tensor:
        """Counts of one batch, in the order of ``counts`` (float64; summed over batches and ranks)."""
        raise NotImplementedError

    def metrics(self, counts: list[float], with_teacher: bool) -> dict[str, float]:
        raise NotImplementedError

    def better(self, value: float, best: float | None) -> bool:
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return True
        return value > best if self.higher_is_better else value < best

    # -- the teacher cache ----------------------------------------------------------------------------
    def compress_output(self, output: Tensor, k: int | None) -> dict[str, Tensor]:
        """The stored form of a teacher output (suffix -> tensor); ``k`` a lossy size bound, if any."""
        return {"": output}

    def expand_output(self, parts: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
        return parts[""]

    # -- checkpoints ----------------------------------------------------------------------------------
    def record(self, dataset) -> dict[str, Any]:
        """What a model record says of the network's input and output (checked when it is loaded)."""
        return {"in_channels": dataset.in_channels}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        """Refuse, before training starts, a network whose probed output (without the batch dimension)
        cannot be this task's output on ``dataset``."""


TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    if not cls.name or not cls.primary:
        raise TypeError(f"{cls.__name__} needs a name and a primary metric")
    TASKS.add(cls.name, cls)
    return cls


def create_task(name: str = "classification") -> Task:
    return TASKS.get(name)()


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

    def record(self, dataset) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        if shape != (dataset.num_classes,):
            got = "no tensor" if shape is None else f"outputs of shape {list(shape)} per image"
            raise ConfigError(f"{network} gives {got}, but {dataset.name} has {dataset.num_classes} classes: "
                              f"its logits must be [batch, {dataset.num_classes}] (a model that does not take "
                              "num_classes gets its head size from model.kwargs; model.output picks the logits "
                              "of a tuple, dict or output object)")
