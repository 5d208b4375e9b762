"""The task interface: what is specific to the kind of prediction a run trains.

A task says how a batch splits into inputs, targets and sample indices; the supervised loss of a
network's output; what evaluation counts (summable over batches and ranks) and the metrics made from
them, including the one ``best.pt`` is chosen on; the input used to probe a network's shapes; how the
teacher cache may store an output compactly; and what a checkpoint's model record says of the output.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import batch as batch_protocol
from ..errors import ConfigError
from ..registry import Registry


class Task:
    """The interface; subclasses are registered with :func:`register_task`."""

    name: ClassVar[str] = ""
    primary: ClassVar[str] = ""  # the validation metric best.pt is chosen on
    higher_is_better: ClassVar[bool] = True
    counts: ClassVar[tuple[str, ...]] = ()  # names of the summed evaluation counts
    # evaluation gives records (rows concatenated over batches and gathered over ranks: eval_records),
    # not summable counts (eval_counts); metrics then receives the records tensor
    gathered: ClassVar[bool] = False

    def split_batch(self, batch: Any) -> tuple[Any, Any, Tensor | None]:
        """``(inputs, targets, sample indices)`` of a loader's batch (:mod:`kdkit.batch`: kdkit's
        :class:`~kdkit.batch.Batch`, or a user's ``(inputs, targets)`` pair, which has no indices)."""
        return batch_protocol.split(batch)

    unit: ClassVar[str] = ""  # what training speed is counted in besides batches (text: "tokens")

    def units(self, inputs: Any) -> Tensor | None:
        """How many ``unit`` a batch's inputs hold (a tensor on their device, not read), or None."""
        return None

    def loss(self, output: Tensor, target: Any) -> Tensor:
        raise NotImplementedError

    def example_input(self, input_shape: Any, device: torch.device) -> Any:
        """What networks are probed on (shapes of every layer): zeros of ``[2, *input_shape]``, or two
        samples of an example batch (:func:`kdkit.batch.example`)."""
        return batch_protocol.example(input_shape, 2, device)

    def eval_counts(self, output: Tensor, target: Any, teacher_output: Tensor | None) -> Tensor:
        """Counts of one batch, in the order of ``counts`` (float64; summed over batches and ranks)."""
        raise NotImplementedError

    def eval_records(self, output: Tensor, target: Any, keys: Tensor) -> Tensor:
        """Rows of one batch (a ``gathered`` task): float64 ``[n, D]``; ``keys`` ``[B]`` number the images
        uniquely over the whole evaluation set and every rank (sample indices)."""
        raise NotImplementedError

    def empty_records(self) -> Tensor:
        """The records of no batch at all (``[0, D]``)."""
        raise NotImplementedError

    def bind(self, network, inputs: Any) -> None:
        """Learn what the task needs of a network before its outputs are used (detection: the points'
        layout); called for every network of a run and before an evaluation. Nothing by default."""

    def prepare(self, load_network) -> None:
        """Called before an evaluation with kdkit's checkpoint loader (:func:`kdkit.engine.rebuild.load_network`:
        a task cannot import the engine), for a task whose metric runs a network of its own (image-to-image:
        the feature network of FID). Nothing by default."""

    def attack_counts(self, model, inputs: Any, target: Any, mean: Tensor | None, std: Tensor | None) -> Tensor | None:
        """Counts of ``model`` under an attack that the task's options ask for, appended to
        :meth:`eval_counts`' (the classification task's ``robust``: PGD accuracy); called in eval mode, the
        loader's normalisation ``mean``/``std`` given (None for a plain loader). None by default."""
        return None

    def empty_counts(self) -> Tensor:
        """The counts of no batch at all (an empty evaluation set)."""
        return torch.zeros(len(self.counts), dtype=torch.float64)

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
        """What a model record says of the network's input and output (checked when it is loaded): the
        dataset's class count (for image-to-image, the target's channels) and input channels, which
        rebuilding a network needs."""
        return {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels}

    def network_record(self, network) -> dict[str, Any]:
        """What a checkpoint's model record adds about one trained network's output (beyond :meth:`record`)."""
        return {}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        """Refuse, before training starts, a network whose probed output (without the batch dimension)
        cannot be this task's output on ``dataset``."""

    def check_cache(self, dataset, samples: int) -> None:
        """Refuse, before anything is computed, a teacher cache this task cannot store (``samples`` inputs)."""


TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    if not cls.name or not cls.primary:
        raise TypeError(f"{cls.__name__} needs a name and a primary metric")
    TASKS.add(cls.name, cls)
    return cls


def task_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """A config's ``task``: a name (``segmentation``) or a mapping with ``name`` and the task's options
    (``{name: image_to_image, feature_network: ...}``), as ``(name, options)``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ConfigError(f"task: a task name or a mapping with 'name' and its options, got {spec!r}"[:300])


def create_task(spec: Any = "classification") -> Task:
    """The task a config names (:func:`task_spec`), built with its options."""
    name, options = task_spec(spec)
    cls = TASKS.get(name)
    if options:
        import inspect

        allowed = list(inspect.signature(cls).parameters)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"task {name}: unknown option(s) {', '.join(unknown)}; it takes "
                              f"{', '.join(allowed) or 'none'}")
    return cls(**options)
