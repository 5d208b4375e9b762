"""The reference input pipeline: a ``torch.utils.data.DataLoader`` with per-image transforms in workers.

This is how the common CIFAR distillation repositories feed their models (torchvision's ``RandomCrop``
with padding, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, one image at a time in worker
processes, then a host-to-device copy). kdkit keeps it as ``data.pipeline: dataloader`` to compare
against: ``kdkit bench --reference`` times it, and the accuracy of the in-memory path is checked against
it. The transforms are written here on tensors (there is no CPU torchvision build to depend on).

Each epoch's order and augmentation follow from ``(seed, epoch)``, so a run resumed at an epoch boundary
repeats the same stream; the per-image random numbers depend on the worker count, unlike the in-memory
path's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batch import Batch
from ..errors import CheckpointError, ConfigError
from .base import ImageSet
from .loader import model_input


class PerImageTransform(torch.utils.data.Dataset):
    """Dataset view that returns ``(image, label, index)`` with one image's crop, flip and normalisation."""

    def __init__(self, data: ImageSet, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0,
                 flip: bool = False, cutout: int = 0, train: bool = True):
        self.data, self.crop_padding, self.flip, self.cutout, self.train = data, crop_padding, flip, cutout, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        img = self.data.images[i] if self.data.images is not None else self.data.reader(i)
        x = model_input(img)  # ToTensor
        if self.train and self.crop_padding > 0:  # RandomCrop(size, padding)
            p = self.crop_padding
            h, w = x.shape[-2:]
            xp = F.pad(x, (p, p, p, p))
            r, c = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = xp[:, r:r + h, c:c + w]
        if self.train and self.flip and torch.rand(()) < 0.5:  # RandomHorizontalFlip
            x = x.flip(-1)
        x = (x - self.mean) / self.std  # Normalize
        if self.train and self.cutout > 0:
            h, w = x.shape[-2:]
            cy, cx = torch.randint(0, h, ()).item(), torch.randint(0, w, ()).item()
            s = self.cutout
            x = x.clone()
            x[:, max(cy - s // 2, 0):max(cy - s // 2 + s, 0), max(cx - s // 2, 0):max(cx - s // 2 + s, 0)] = 0.0
        return x, int(self.data.labels[i]), i


class DataLoaderPipeline:
    """The :class:`~kdkit.data.base.TrainLoader` protocol over a ``DataLoader`` (one process: kdkit's
    distributed training uses the in-memory loader)."""

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = False, seed: int = 0, crop_padding: int = 0, flip: bool = False,
                 cutout: int = 0, device: torch.device | str = "cpu", drop_last: bool = False,
                 num_workers: int = 2, channels_last: bool = False):
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.device = torch.device(device)
        self.drop_last = drop_last and len(data) > batch_size
        self.channels_last = channels_last
        self.epoch = 0
        self.dataset = PerImageTransform(data, mean, std, crop_padding, flip, cutout, train=shuffle)
        self.num_workers = num_workers
        self.augments = shuffle and (crop_padding > 0 or flip or cutout > 0)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last,
            num_workers=self.num_workers, generator=gen, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        if self.shuffle:
            self.epoch += 1
        for x, y, idx in loader:
            yield Batch(self._to_device(x), y.to(self.device, non_blocking=True),
                        idx.to(self.device, non_blocking=True))

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def num_views(self) -> int:
        """1 without augmentation (every input repeats), 0 with per-image random augmentation."""
        return 0 if self.augments else 1

    def view_keys(self, idx: Tensor) -> Tensor:
        return idx

    def iter_views(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Every training input once (without augmentation only), as ``(inputs, sample indices)``."""
        if self.num_views < 1:
            raise ConfigError("the training inputs are freshly augmented every epoch; they cannot be enumerated")
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size or self.batch_size,
                                             num_workers=self.num_workers)
        for x, _, idx in loader:
            yield self._to_device(x), idx.to(self.device)

    def fingerprint(self) -> dict[str, str]:
        h = hashlib.sha256()
        for t in (self.data.labels, self.dataset.mean, self.dataset.std, self.data.images):
            h.update(t.contiguous().numpy().tobytes())
        d = self.dataset
        return {"inputs": h.hexdigest(), "augment": f"{d.crop_padding},{d.flip},{d.cutout}",
                "views": str(self.num_views), "pipeline": "dataloader"}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def check_state(self, state, source: str) -> None:
        """Refuse a saved state this loader cannot take (before anything is restored)."""
        if not isinstance(state, dict) or type(state.get("epoch", 0)) is not int or state.get("epoch", 0) < 0:
            raise CheckpointError(f"{source}: the data loader state is malformed")

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
