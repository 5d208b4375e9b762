"""Image-quality measures of generated images: per-image L1, PSNR and SSIM, and FID and KID in the feature
space of a classifier kdkit trained (the *feature network*).

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017) is ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` over the features of real and
generated images; KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018) the unbiased MMD^2 with the
cubic polynomial kernel, averaged over random subsets. Both are torchmetrics' implementations, given
features: their default extractor is Inception-v3, whose weights cannot be downloaded here, so the
features come from a kdkit classifier of the same data (``task.feature_network``), and the metric is
named after it (``fid_<feature_name>``, e.g. FID-FMNIST): a number comparable only with others measured
through the same network, whose SHA-256 every checkpoint records.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class GivenFeatures(nn.Module):
    """The feature extractor handed to torchmetrics: the features were computed already (by
    :class:`FeatureNetwork`, batch by batch during evaluation), so it passes them on; it declares their
    size in ``num_features``, which keeps torchmetrics from probing it with a 3x299x299 image."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError:
        raise ConfigError("FID and KID are computed with torchmetrics: pip install 'kdkit[gan]' "
                          "(torchmetrics==1.9.0)") from None
    return FrechetInceptionDistance, KernelInceptionDistance


def fid(real: Tensor, fake: Tensor) -> float:
    """FID between two sets of features ``[N, D]`` (torchmetrics' ``FrechetInceptionDistance``, float64)."""
    fid_cls, _ = _torchmetrics()
    metric = fid_cls(feature=GivenFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID between two sets of features ``[N, D]``: the mean over ``subsets`` random subsets of
    ``min(subset_size, N)`` images (torchmetrics' ``KernelInceptionDistance``; its subsets drawn from a
    fixed ``seed``, so that the same features give the same number)."""
    _, kid_cls = _torchmetrics()
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return math.nan
    with warnings.catch_warnings():  # that it keeps every feature: it is given them all at once anyway
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = kid_cls(feature=GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


def psnr(output01: Tensor, target01: Tensor) -> Tensor:
    """Per-image PSNR in dB of images ``[B, C, H, W]`` in [0, 1] (data range 1); 100 dB for an exact copy."""
    mse = (output01 - target01).square().flatten(1).mean(1)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-10)), torch.full_like(mse, 100.0))


def ssim(output01: Tensor, target01: Tensor) -> Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, data range 1) of images in [0, 1]:
    torchmetrics' ``structural_similarity_index_measure``."""
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        raise ConfigError("SSIM is computed with torchmetrics: pip install 'kdkit[gan]'") from None
    return structural_similarity_index_measure(output01.float(), target01.float(), data_range=1.0,
                                               reduction="none")


@lru_cache(maxsize=4)
def file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureNetwork:
    """A kdkit classifier's checkpoint as a feature extractor: images in [0, 1] are normalised as its
    training run normalised them and its penultimate features (the input of its last ``nn.Linear``)
    are returned. Loaded on first use, on the device of the images it is given."""

    def __init__(self, path: str):
        self.path = str(Path(path).expanduser())
        self.loader = None  # kdkit's checkpoint loader, given by the evaluation (Task.prepare)
        self._model: nn.Module | None = None
        self._tap = None
        self.mean = self.std = None

    @property
    def sha256(self) -> str:
        p = Path(self.path)
        if not p.is_file():
            raise ConfigError(f"task.feature_network: {self.path} is not a file (a kdkit checkpoint of the classifier "
                              "whose features FID and KID are measured in; see docs/gan.md)")
        st = p.stat()
        return file_sha256(self.path, st.st_mtime_ns, st.st_size)

    def load(self, channels: int) -> None:
        if self._model is not None:
            return
        from ..features import FeatureTap, default_embedding, probe

        self.sha256  # noqa: B018  (says clearly when the file is missing)
        if self.loader is None:
            raise RuntimeError("FeatureNetwork used before Task.prepare gave it the checkpoint loader")
        net = self.loader(self.path)
        rec = net.ckpt.get("inference") or {}
        shape = rec.get("input_shape")
        if net.record.get("in_channels") != channels or not isinstance(shape, list):
            raise ConfigError(f"task.feature_network {self.path} takes {net.record.get('in_channels')}-channel inputs "
                              f"{shape}; the generated images have {channels} channel(s)")
        self.input_shape = tuple(shape)
        self.mean = torch.tensor(rec.get("mean", [0.0] * channels)).view(1, -1, 1, 1)
        self.std = torch.tensor(rec.get("std", [1.0] * channels)).view(1, -1, 1, 1)
        model = net.model.eval()
        spec = default_embedding(probe(model, self.input_shape))
        self._model, self._tap = model, FeatureTap(model, [spec])
        self._spec = spec

    @torch.no_grad()
    def __call__(self, images01: Tensor) -> Tensor:
        """Features ``float64 [B, D]`` of images ``[B, C, H, W]`` in [0, 1]."""
        self.load(images01.shape[1])
        if tuple(images01.shape[1:]) != self.input_shape:
            raise ConfigError(f"task.feature_network {self.path} takes images {list(self.input_shape)}; the generated "
                              f"ones are {list(images01.shape[1:])}")
        model = self._model.to(images01.device)
        x = (images01.float() - self.mean.to(images01.device)) / self.std.to(images01.device)
        with self._tap as tap:
            model(x)
            return tap[self._spec].flatten(1).double()
