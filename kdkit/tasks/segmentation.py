"""Semantic segmentation: a class for every pixel.

Targets are masks ``[B, H, W]`` of class ids, with ``IGNORE`` (255, as in VOC and Cityscapes) for pixels
that count nowhere; networks give logits ``[B, K, H, W]`` at the input's resolution (a network with an
output stride upsamples its logits itself, as torchvision's and MMSegmentation's models do).

Evaluation counts a confusion matrix (rows: true class, columns: predicted), which sums over batches and
ranks, and derives from it the metrics MMSegmentation and torchvision's references report: mIoU (the
primary metric, the mean over the classes that occur in the target or the prediction), pixel accuracy and
each class's IoU, all in %.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Task, register_task

IGNORE = 255


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[K, K]`` counts of (true class, predicted class) over the pixels whose target is not ``IGNORE``
    (``pred``, ``target``: ``[B, H, W]`` class ids)."""
    keep = target != IGNORE
    index = target[keep].long() * num_classes + pred[keep].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    if counts.numel() > num_classes * num_classes:
        raise ConfigError(f"a mask holds class id {int(target[keep].max())}, but the network predicts {num_classes} "
                          f"classes (ids 0-{num_classes - 1}; {IGNORE} = ignore)")
    return counts.reshape(num_classes, num_classes)


def iou_per_class(conf: Tensor) -> Tensor:
    """Each class's IoU ``tp / (tp + fp + fn)`` from a confusion matrix; NaN for a class that occurs in
    neither the target nor the prediction."""
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


@register_task
class Segmentation(Task):
    """Per-pixel cross-entropy (ignoring ``IGNORE``); a summed confusion matrix; mIoU, pixel accuracy,
    per-class IoU (``iou/<k>``) and, with teachers, the % of pixels where the prediction agrees with the
    teachers' mean-logit prediction; best.pt on mIoU. The teacher cache is refused: per-pixel logits of a
    whole training set do not fit (11 x 64 x 64 logits of 10k canvases are about 900 MB in fp16)."""

    name = "segmentation"
    primary = "miou"
    counts = ("pixels", "loss", "agreement")  # then the K x K confusion matrix, row-major

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        try:
            total = F.cross_entropy(output.float(), target, ignore_index=IGNORE, reduction="sum")
        except IndexError as e:  # on the CPU; CUDA stops at a device-side assertion instead
            raise ConfigError(f"a mask holds a class id the network does not predict ({e}); ids are "
                              f"0-{output.shape[1] - 1}, {IGNORE} = ignore") from None
        return total / (target != IGNORE).sum().clamp_min(1)

    def eval_counts(self, output: Tensor, target: Tensor, teacher_output: Tensor | None) -> Tensor:
        output, target = output.float(), target.long()
        pred = output.argmax(1)
        keep = target != IGNORE
        agree = ((teacher_output.argmax(1) == pred) & keep).sum().float() if teacher_output is not None \
            else output.new_zeros(())
        conf = confusion_matrix(pred, target, output.shape[1]).flatten().float()  # first: checks the ids
        head = torch.stack([keep.sum().float(), F.cross_entropy(output, target, ignore_index=IGNORE,
                                                                 reduction="sum"), agree])
        return torch.cat([head, conf]).double()

    def metrics(self, counts: list[float], with_teacher: bool) -> dict[str, float]:
        pixels, loss, agree, *flat = counts
        k = math.isqrt(len(flat))
        conf = torch.tensor(flat, dtype=torch.float64).reshape(k, k)
        iou = iou_per_class(conf)
        present = ~iou.isnan()
        n = max(pixels, 1.0)
        out = {"miou": 100.0 * float(iou[present].mean()) if present.any() else math.nan,
               "pixel_acc": 100.0 * float(conf.diagonal().sum()) / n, "loss": loss / n}
        out.update({f"iou/{c}": 100.0 * float(iou[c]) for c in range(k) if present[c]})
        if with_teacher:
            out["agreement"] = 100.0 * agree / n
        return out

    num_classes: int | None = None  # known once a dataset was seen (record, check_output)

    def empty_counts(self) -> Tensor:
        """No batch (a rank whose evaluation shard is empty): zeros of the same length as every other rank's
        counts, so that they can be summed."""
        return torch.zeros(len(self.counts) + (self.num_classes or 0) ** 2, dtype=torch.float64)

    def record(self, dataset) -> dict[str, Any]:
        self.num_classes = dataset.num_classes
        return super().record(dataset)

    def network_record(self, network) -> dict[str, Any]:
        """The output stride (the encoder's downsampling before the logits are upsampled), when the network
        states it (kdkit's U-Nets and DeepLabV3 heads do)."""
        stride = getattr(network, "output_stride", None)
        return {"output_stride": int(stride)} if isinstance(stride, int) else {}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        self.num_classes = dataset.num_classes
        want = (dataset.num_classes, *dataset.image_size)
        if shape != want:
            got = "no tensor" if shape is None else f"outputs of shape {list(shape)} per image"
            raise ConfigError(f"{network} gives {got}, but segmentation of {dataset.name} needs logits "
                              f"[batch, {', '.join(map(str, want))}]: {dataset.num_classes} classes at the input's "
                              f"{dataset.image_size[0]}x{dataset.image_size[1]} pixels (a network with an output "
                              "stride must upsample its logits; model.output picks them from a dict such as "
                              "torchvision's {'out': ...})")

    def check_cache(self, dataset, samples: int) -> None:
        k, (h, w) = dataset.num_classes, dataset.image_size
        raise ConfigError(f"train.teacher_cache: segmentation outputs are per pixel; {samples} training images of "
                          f"{k}x{h}x{w} logits would take {samples * k * h * w * 2 / 2**30:.1f} GiB in float16. "
                          "Run the teacher live (remove train.teacher_cache)")
