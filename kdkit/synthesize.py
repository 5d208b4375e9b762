"""Distillation without the training data: ``kdkit synthesize`` makes training images from a trained
teacher alone by DeepInversion (Yin et al. 2020, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR; their code ``NVlabs/DeepInversion``), for a student to learn from by KD with
``data.train_file``.

Each batch of images starts as Gaussian noise (in the teacher's normalised units) with target classes taken
in turn, and is optimised with Adam so that the teacher classifies each image as its target
(cross-entropy) while the statistics of every batch-norm layer's input over the batch match the layer's
running mean and variance (the feature prior: the sum over layers of the L2 distances of the batch mean and
variance to the running ones), with a total-variation prior (the L2 norms of the differences to the four
neighbours) and an optional L2 prior on the pixels; each step sees the batch rolled by a random jitter
of up to ``jitter`` pixels. The defaults are their CIFAR-10 script's: batch 256, 2,000 iterations, Adam at
0.1, feature weight 100, total variation 2.5e-5, no L2 prior, and a jitter of 2 pixels of 32, here a
sixteenth of the image side (1 for Fashion-MNIST, 0 for the 8x8 digits, where a 2-pixel roll left the
teacher's classes unlearnt). Their ImageNet script clips the
images to the valid range after every step, and so does this (so that they are images, [0, 1] once
un-normalised); each batch keeps the step with the lowest loss, as both scripts do. Adaptive DeepInversion
(their competition term with a student) is not implemented.

The teacher needs batch norms (the feature prior is the method); a teacher without any is refused. The
output is a safetensors file for ``data.train_file`` (:mod:`kdkit.data.synthetic`), named for the dataset the
teacher was trained on (its checkpoint records it), so the student is measured on that dataset's real test
split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


def total_variation(x: Tensor) -> Tensor:
    """The sum of the L2 norms of the differences of each pixel to its right, lower and two diagonal
    neighbours (DeepInversion's R_TV)."""
    return (torch.norm(x[..., :, :-1] - x[..., :, 1:]) + torch.norm(x[..., :-1, :] - x[..., 1:, :])
            + torch.norm(x[..., 1:, :-1] - x[..., :-1, 1:]) + torch.norm(x[..., :-1, :-1] - x[..., 1:, 1:]))


class BatchNormPrior:
    """Hooks on every ``BatchNorm2d`` of a network: after a forward pass, ``loss()`` is the sum over the layers
    of ``||var_batch - running_var||_2 + ||mean_batch - running_mean||_2`` of their inputs."""

    def __init__(self, model: nn.Module):
        self.terms: list[Tensor] = []
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.hooks = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple, output: Tensor) -> None:
        x = inputs[0]
        mean, var = x.mean((0, 2, 3)), x.transpose(0, 1).flatten(1).var(1, unbiased=False)
        self.terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

    def loss(self) -> Tensor:
        out, self.terms = sum(self.terms), []
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def synthesize(teacher: str | Path, images: int = 256, batch: int = 256, iterations: int = 2000, lr: float = 0.1,
               feature: float = 100.0, tv: float = 2.5e-5, l2: float = 0.0, jitter: int | None = None, seed: int = 0,
               out: str | Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``images`` images synthesised from the kdkit checkpoint ``teacher`` (see the module docstring), in
    batches of ``batch``; writes ``out`` when given. Returns the images (in [0, 1]), their target labels, the
    teacher's accuracy on them against the targets, and each batch's feature prior at the start and at the
    kept step."""
    from .data.synthetic import write_train_file
    from .engine.rebuild import load_network

    if images < 1 or batch < 1 or iterations < 0 or lr <= 0 or min(feature, tv, l2) < 0 or (jitter or 0) < 0:
        raise ConfigError("synthesize: images and batch must be >= 1, iterations and jitter >= 0, lr > 0 and the "
                          "prior weights >= 0")
    net = load_network(teacher)
    model = net.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = net.ckpt.get("inference") or {}
    shape, classes = info.get("input_shape"), info.get("classes") or []
    if not (isinstance(shape, list) and len(shape) == 3 and classes):
        raise ConfigError(f"synthesize: {teacher} is not an image classifier's checkpoint (its input shape is "
                          f"{shape})")
    prior = BatchNormPrior(model)
    if not prior.layers:
        raise ConfigError(f"synthesize: the teacher ({net.spec.name}) has no batch-norm layers, whose running "
                          "statistics DeepInversion matches")
    jitter = max(shape[1:]) // 16 if jitter is None else jitter  # their CIFAR-10 script: 2 pixels of 32
    mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(info["std"]).view(1, -1, 1, 1)
    low, high = -mean / std, (1 - mean) / std
    gen = torch.Generator().manual_seed(seed)
    made, labels, start_prior, kept_prior = [], [], [], []
    t0 = time.time()
    for first in range(0, images, batch):
        n = min(batch, images - first)
        target = torch.arange(first, first + n) % len(classes)
        x = torch.randn(n, *shape, generator=gen).clamp(low, high).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        best, best_x, best_feat = float("inf"), x.detach().clone(), float("nan")
        for it in range(iterations + 1):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
            moved = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            ce = F.cross_entropy(model(moved), target)
            feat = prior.loss()
            loss = ce + feature * feat + tv * total_variation(moved) + l2 * torch.norm(moved, 2)
            value, feat_value = float(loss.detach()), float(feat.detach())
            if it == 0:
                start_prior.append(feat_value)
            if value < best:
                best, best_x, best_feat = value, x.detach().clone(), feat_value
            if it == iterations:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        kept_prior.append(best_feat)
        made.append(best_x)
        labels.append(target)
        if log:
            log(f"synthesize: {first + n}/{images} images, feature prior {start_prior[-1]:.3f} -> {best_feat:.3f}, "
                f"{time.time() - t0:.0f}s")
    prior.close()
    x = torch.cat(made)
    y = torch.cat(labels)
    with torch.no_grad():
        teacher_top1 = 100.0 * float((model(x).argmax(1) == y).float().mean())
    pixels = (x * std + mean).clamp(0.0, 1.0)
    result = {"images": pixels, "labels": y, "teacher_top1": teacher_top1, "feature_prior_start": start_prior,
              "feature_prior_kept": kept_prior, "seconds": time.time() - t0}
    if out is not None:
        write_train_file(out, pixels, y, {"dataset": info.get("dataset", ""), "made_by": "kdkit synthesize "
                                          "(DeepInversion)", "teacher": str(teacher), "iterations": iterations,
                                          "lr": lr, "feature": feature, "tv": tv, "l2": l2, "seed": seed})
        result["out"] = str(out)
    return result
