"""Lifelong distillation: ``kdkit lifelong`` learns a sequence of tasks, each a few of a dataset's classes
(Split-Fashion-MNIST: 5 tasks of 2 classes), with Learning without Forgetting (Li & Hoiem 2016, "Learning
without Forgetting", ECCV; TPAMI 2017): while the network learns task ``t`` on its data alone, the outputs
of the network as it was before task ``t`` keep its old tasks' heads where they were, on the new data.

The network is a zoo classifier whose last linear layer is replaced by one head per task (the paper's
multi-head setting). Learning task ``t``: cross-entropy of head ``t`` on the task's labels, plus ``lambda``
times, for every earlier head, the paper's knowledge-distillation loss at temperature ``T`` between the
frozen previous network's and the current network's head outputs: ``-sum softmax(old / T) * log_softmax(new /
T)``, averaged over the batch. No ``T**2`` factor: the paper (and FACIL, which follows it) weights the term
by ``lambda`` alone, while Avalanche's LwF multiplies it by its ``alpha``; we keep the paper's, so that
``lambda: 1, T: 2`` are its published settings. The paper's warm-up (the new head trained alone first) is
``warmup_epochs``. The previous network computes its targets in training mode, its batch norms on the batch's
statistics as the network being trained computes its outputs (no gradient, and a copy that is thrown away
after the task); with its stored running statistics instead, the two disagree on every batch, and on digits
LwF then forgot more than fine-tuning.

Two evaluations after each task, on every task's test images seen so far: **task-incremental** (the main
result, the paper's setting: each image scored by its own task's head) and **class-incremental** (beside it:
the prediction is the arg-max over all seen heads' outputs together, so the network must also tell the
tasks apart). Reported: the accuracy matrix (row: after task ``i``; column: task ``j``), the average accuracy
after the last task, and forgetting (for each task but the last, its best accuracy before the end minus its
accuracy at the end, averaged). ``method``: ``lwf``; ``finetune`` (the same without the distillation term:
the lower bound); ``joint`` (every task's data at once, each sample's loss on its own head: the upper bound).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

METHODS = ("lwf", "finetune", "joint")


def lwf_loss(new: Tensor, old: Tensor, temperature: float) -> Tensor:
    """Li & Hoiem's distillation term: ``-sum softmax(old/T) log_softmax(new/T)``, batch mean (no T^2)."""
    return -(F.softmax(old.float() / temperature, 1) * F.log_softmax(new.float() / temperature, 1)).sum(1).mean()


class MultiHead(nn.Module):
    """A trunk (a classifier whose last linear layer is removed) and one linear head per task."""

    def __init__(self, model: nn.Module, sizes: list[int]):
        super().__init__()
        path = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not path:
            raise ConfigError(f"lifelong: {type(model).__name__} has no linear layer to replace by task heads")
        from .transforms import replace_module

        last = model.get_submodule(path[-1])
        replace_module(model, path[-1], nn.Identity())
        self.trunk = model
        self.heads = nn.ModuleList(nn.Linear(last.in_features, k) for k in sizes)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.trunk(x)
        return [h(features) for h in self.heads]


def parse_tasks(spec: Any, classes: list[str]) -> list[list[int]]:
    """Tasks as lists of class indices, from ``[[0, 1], [2, 3]]``, class names, or ``"0,1/2,3"``; default
    (``None``): consecutive pairs of classes."""
    if spec is None:
        return [list(range(i, min(i + 2, len(classes)))) for i in range(0, len(classes), 2)]
    if isinstance(spec, str):
        spec = [part.split(",") for part in spec.split("/") if part.strip()]
    tasks, seen = [], set()
    for group in spec:
        task = []
        for c in group:
            c = str(c).strip()
            index = classes.index(c) if c in classes else int(c) if c.isdigit() and int(c) < len(classes) else None
            if index is None:
                raise ConfigError(f"lifelong: task {len(tasks) + 1} names class {c!r}, which is not one of "
                                  f"{', '.join(classes)[:200]} (or an index below {len(classes)})")
            if index in seen:
                raise ConfigError(f"lifelong: class {classes[index]!r} is in two tasks")
            seen.add(index)
            task.append(index)
        if not task:
            raise ConfigError(f"lifelong: task {len(tasks) + 1} has no classes")
        tasks.append(task)
    if len(tasks) < 2:
        raise ConfigError("lifelong: a task sequence needs at least two tasks")
    return tasks


def _split(images: Tensor, labels: Tensor, tasks: list[list[int]]) -> list[tuple[Tensor, Tensor]]:
    """Each task's images and labels local to the task (0 .. its size - 1)."""
    out = []
    for task in tasks:
        keep = torch.isin(labels, torch.tensor(task))
        local = torch.tensor([task.index(int(v)) for v in labels[keep]], dtype=torch.long)
        out.append((images[keep], local))
    return out


@torch.no_grad()
def _accuracies(net: MultiHead, tests: list[tuple[Tensor, Tensor]], upto: int) -> tuple[list[float], list[float]]:
    """Task- and class-incremental accuracy (%) on tasks 0..upto."""
    net.eval()
    offsets = [0]
    for h in net.heads:
        offsets.append(offsets[-1] + h.out_features)
    task_il, class_il = [], []
    for j in range(upto + 1):
        x, y = tests[j]
        outs = net(x)
        task_il.append(100.0 * float((outs[j].argmax(1) == y).float().mean()))
        joint = torch.cat(outs[:upto + 1], 1).argmax(1)
        class_il.append(100.0 * float((joint == y + offsets[j]).float().mean()))
    net.train()
    return task_il, class_il


def summary(matrix: list[list[float | None]]) -> dict[str, float]:
    """Average accuracy after the last task, and forgetting (best before the end minus at the end, averaged
    over every task but the last)."""
    last = matrix[-1]
    forgetting = [max(row[j] for row in matrix[j:-1]) - last[j] for j in range(len(last) - 1)]
    return {"average": sum(last) / len(last), "forgetting": sum(forgetting) / len(forgetting)}


def lifelong(data: str = "fashion_mnist", model: str = "cnn_tiny", method: str = "lwf", tasks: Any = None,
             epochs: int = 2, warmup_epochs: int = 0, lam: float = 1.0, temperature: float = 2.0, lr: float = 0.05,
             batch_size: int = 128, seed: int = 0, limit_train: int | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Learn ``data``'s classes as a task sequence with ``method`` (see the module docstring); the accuracy
    matrices, average accuracy and forgetting of both evaluations."""
    from .data.tensors import image_classification, unit_images
    from .models import create_model

    if method not in METHODS:
        raise ConfigError(f"lifelong: method must be one of {', '.join(METHODS)}, got {method!r}")
    if epochs < 1 or warmup_epochs < 0 or lam < 0 or temperature <= 0 or lr <= 0 or batch_size < 1:
        raise ConfigError("lifelong: epochs >= 1, warmup_epochs >= 0, lambda >= 0, temperature > 0, lr > 0 and "
                          "batch_size >= 1")
    ds, mean, std = image_classification(data, "lifelong")
    classes = [str(c) for c in ds.classes] or [str(i) for i in range(ds.num_classes)]
    order = parse_tasks(tasks, classes)

    def norm(x: Tensor) -> Tensor:
        return (unit_images(x) - mean) / std

    train_x, train_y = ds.train.images, ds.train.labels
    if limit_train is not None:
        train_x, train_y = train_x[:limit_train], train_y[:limit_train]
    trains = _split(norm(train_x), train_y, order)
    tests = _split(norm(ds.test.images), ds.test.labels, order)
    torch.manual_seed(seed)
    net = MultiHead(create_model(model, num_classes=ds.num_classes, in_channels=ds.in_channels),
                    [len(t) for t in order])
    gen = torch.Generator().manual_seed(seed)
    matrices: dict[str, list[list[float | None]]] = {"task_incremental": [], "class_incremental": []}
    t0 = time.time()

    def train(parts: list[tuple[int, Tensor, Tensor]], n_epochs: int, params, old: MultiHead | None, upto: int):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
        x = torch.cat([p[1] for p in parts])
        y = torch.cat([p[2] for p in parts])
        head = torch.cat([torch.full((len(p[2]),), p[0]) for p in parts])
        for _ in range(n_epochs):
            for idx in torch.randperm(len(y), generator=gen).split(batch_size):
                outs = net(x[idx])
                loss = sum(F.cross_entropy(outs[h][head[idx] == h], y[idx][head[idx] == h], reduction="sum")
                           for h in head[idx].unique().tolist()) / len(idx)
                if old is not None and lam > 0:
                    with torch.no_grad():
                        before = old(x[idx])
                    loss = loss + lam * sum(lwf_loss(outs[j], before[j], temperature) for j in range(upto))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    if method == "joint":
        train([(t, *trains[t]) for t in range(len(order))], epochs, net.parameters(), None, 0)
        rows = [_accuracies(net, tests, len(order) - 1)]
    else:
        rows = []
        for t in range(len(order)):
            old = copy.deepcopy(net) if t and method == "lwf" else None
            if warmup_epochs and t:  # the paper's warm-up: the new head alone
                train([(t, *trains[t])], warmup_epochs, net.heads[t].parameters(), None, t)
            train([(t, *trains[t])], epochs, net.parameters(), old, t)
            rows.append(_accuracies(net, tests, t))
            if log:
                log(f"lifelong ({method}): task {t + 1}/{len(order)} learnt; task-incremental accuracy on the tasks "
                    f"so far: {', '.join(f'{a:.1f}' for a in rows[-1][0])} ({time.time() - t0:.0f}s)")
    width = len(order)
    for name, k in (("task_incremental", 0), ("class_incremental", 1)):
        matrices[name] = [row[k] + [None] * (width - len(row[k])) for row in rows]  # None: not learnt yet
    result: dict[str, Any] = {"method": method, "tasks": [[classes[c] for c in t] for t in order],
                              "seconds": time.time() - t0}
    for name, matrix in matrices.items():
        result[name] = {"matrix": matrix, **(summary(matrix) if len(matrix) > 1 else
                                             {"average": sum(matrix[-1]) / width, "forgetting": None})}
    return result
