"""Image (and any input) classification, the first task."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batch import call
from ..errors import ConfigError
from ..features import pick_logits
from ..losses.robust import PGD
from .base import Task, register_task


@register_task
class Classification(Task):
    """Image classification: label cross-entropy; top-1/top-5 accuracy, mean loss and (with teachers)
    agreement of the prediction with the teachers' mean-logit prediction; best.pt on top-1; the cache may
    keep each sample's ``k`` largest logits and the log-mean-exp of the rest.

    ``robust`` (a task option: ``task: {name: classification, robust: {epsilon: 0.0314, step_size: 0.00784,
    steps: 10}}``) adds ``robust_top1``: top-1 accuracy on inputs perturbed by an L-inf PGD attack on the
    evaluated network (:class:`~kdkit.losses.robust.PGD`; epsilon and step in pixel units of [0, 1] images,
    the random start drawn from a generator seeded 0 at every evaluation, so the figure is reproducible).
    It costs ``steps`` forward and backward passes per batch."""

    name = "classification"
    primary = "top1"
    counts = ("n", "top1", "top5", "loss", "agreement")

    def __init__(self, robust: dict[str, Any] | None = None):
        self.attack = None
        if robust is not None:
            if not isinstance(robust, dict):
                raise ConfigError(f"task.robust: a mapping of epsilon, step_size, steps, random_start, "
                                  f"got {robust!r}"[:200])
            try:
                self.attack = PGD(**robust)
            except TypeError:
                raise ConfigError(f"task.robust takes epsilon, step_size, steps and random_start; got "
                                  f"{', '.join(sorted(robust))}") from None
            except ValueError as e:
                raise ConfigError(f"task.robust: {e}") from None
            self.counts = (*type(self).counts, "robust")
        self._generator: torch.Generator | None = None

    def prepare(self, load_network) -> None:
        self._generator = torch.Generator().manual_seed(0)  # every evaluation attacks from the same start

    def bind(self, network, inputs: Any) -> None:
        if self.attack is not None and not (isinstance(inputs, Tensor) and inputs.is_floating_point()):
            what = str(inputs.dtype) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ConfigError(f"task.robust: a PGD attack perturbs one float input tensor; these inputs are {what}")

    def attack_counts(self, model, inputs: Any, target: Tensor, mean: Tensor | None, std: Tensor | None):
        if self.attack is None:
            return None
        adv = self.attack.perturb(lambda v: pick_logits(call(model, v)), inputs, target, mean, std, self._generator)
        with torch.no_grad():
            correct = (pick_logits(call(model, adv)).argmax(1) == target).sum()
        return correct.double().reshape(1)

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
        n, top1, top5, loss, agree, *robust = counts
        n = max(n, 1)
        out = {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n}
        if with_teacher:
            out["agreement"] = 100.0 * agree / n
        if robust:
            out["robust_top1"] = 100.0 * robust[0] / n
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
