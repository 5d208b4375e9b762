"""Paired image-to-image translation, as pix2pix (Isola et al., CVPR 2017) trains it.

Targets are grey images stored as uint8 ``[B, H, W]`` (flipped with their inputs by the loader) and
scaled here to [-1, 1]; networks give images ``[B, 1, H, W]`` in [-1, 1] (a ``tanh`` output, as pix2pix's
and GAN Compression's generators). The supervised loss is the L1 distance (pix2pix's reconstruction
term; the adversarial term and its weight come from the ``gan`` method).

Evaluation keeps one record per image (gathered over ranks): its L1 error, PSNR and SSIM against the
target, and, with a feature network (``task: {name: image_to_image, feature_network: <checkpoint>,
feature_name: fmnist}``), the features of the generated and of the real image, from which FID and KID
(x 10^3) are computed over the whole set (:mod:`kdkit.tasks.image_quality`). best.pt is chosen on the
FID (``fid_<feature_name>``), or on the L1 error without a feature network: lower is better.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from . import image_quality
from .base import Task, register_task

FIXED = 4  # key, l1, psnr, ssim; then the fake features, then the real ones


@register_task
class ImageToImage(Task):
    """L1 loss; per-image L1 (on the [-1, 1] scale), PSNR and SSIM (on [0, 1]); FID and KID (x 10^3) in
    the feature network's space; best.pt on the FID, or on L1 without a feature network."""

    name = "image_to_image"
    primary = "l1"
    higher_is_better = False
    gathered = True

    def __init__(self, feature_network: str | None = None, feature_name: str = "features",
                 kid_subsets: int = 100, kid_subset_size: int = 1000):
        if feature_network is not None and not isinstance(feature_network, str):
            raise ConfigError(f"task.feature_network: a checkpoint path, got {feature_network!r}")
        if not isinstance(feature_name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", feature_name):
            raise ConfigError(f"task.feature_name: 1-32 lower-case letters, digits or _ (it names the metrics "
                              f"fid_<name>, kid_<name>), got {feature_name!r}")
        for key, value in (("kid_subsets", kid_subsets), ("kid_subset_size", kid_subset_size)):
            if type(value) is not int or not 1 <= value <= 100_000:
                raise ConfigError(f"task.{key}: an integer in [1, 100000], got {value!r}")
        self.features = image_quality.FeatureNetwork(feature_network) if feature_network else None
        self.feature_name, self.kid_subsets, self.kid_subset_size = feature_name, kid_subsets, kid_subset_size
        if self.features is not None:
            self.primary = f"fid_{feature_name}"
        self.dims: int | None = None  # the feature size, known once a batch was seen

    @staticmethod
    def target_image(target: Tensor) -> Tensor:
        """Stored targets (uint8 values ``[B, H, W]``, possibly as int64 after augmentation) as images
        ``[B, 1, H, W]`` in [-1, 1]."""
        return (target.float() / 127.5 - 1.0).unsqueeze(1)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.float() - self.target_image(target)).abs().mean()

    def eval_records(self, output: Tensor, target: Tensor, keys: Tensor) -> Tensor:
        real = self.target_image(target)
        fake = output.float()
        fake01, real01 = ((fake + 1) / 2).clamp(0, 1), (real + 1) / 2
        cols = [keys.double().view(-1, 1), (fake - real).abs().flatten(1).mean(1, keepdim=True).double(),
                image_quality.psnr(fake01, real01).double().view(-1, 1),
                image_quality.ssim(fake01, real01).double().view(-1, 1)]
        if self.features is not None:
            f_fake, f_real = self.features(fake01), self.features(real01)
            self.dims = f_fake.shape[1]
            cols += [f_fake, f_real]
        return torch.cat([c.to(output.device) for c in cols], 1)

    def prepare(self, load_network) -> None:
        if self.features is not None:
            self.features.loader = load_network

    def empty_records(self) -> Tensor:
        return torch.zeros(0, FIXED + 2 * (self.dims or 0), dtype=torch.float64)

    def metrics(self, records: Tensor, with_teacher: bool) -> dict[str, float]:
        r = records.double().cpu()
        r = r[r[:, 0].argsort()]  # one order whatever the ranks and batches: KID's subsets see the same rows
        if not len(r):
            return {"l1": math.nan, "psnr": math.nan, "ssim": math.nan}
        out = {"l1": float(r[:, 1].mean()), "psnr": float(r[:, 2].mean()), "ssim": float(r[:, 3].mean())}
        if self.features is not None and r.shape[1] > FIXED:
            d = (r.shape[1] - FIXED) // 2
            fake, real = r[:, FIXED:FIXED + d], r[:, FIXED + d:]
            out[f"fid_{self.feature_name}"] = image_quality.fid(real, fake) if len(r) >= 2 else math.nan
            out[f"kid_{self.feature_name}"] = 1000.0 * image_quality.kid(real, fake, self.kid_subsets,
                                                                         self.kid_subset_size)
        return out

    def network_record(self, network) -> dict[str, Any]:
        """The feature network the run's FID and KID were measured through (path and SHA-256)."""
        if self.features is None:
            return {}
        return {"feature_network": {"path": self.features.path, "sha256": self.features.sha256,
                                    "name": self.feature_name}}

    def check_output(self, shape: tuple[int, ...] | None, dataset, network: str) -> None:
        want = (dataset.num_classes, *dataset.image_size)
        if shape != want:
            got = "no tensor" if shape is None else f"images of shape {list(shape)}"
            raise ConfigError(f"{network} gives {got}, but image_to_image on {dataset.name} needs images "
                              f"[batch, {', '.join(map(str, want))}]: the target's {dataset.num_classes} channel(s) "
                              f"at {dataset.image_size[0]}x{dataset.image_size[1]} pixels")
        if self.features is not None:
            self.features.sha256  # noqa: B018  (a missing feature network is refused before training)
