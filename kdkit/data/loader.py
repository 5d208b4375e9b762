"""One batch loader for every dataset, with augmentation done on whole batches.

In-memory datasets are indexed directly (no DataLoader, no per-image Python); lazy datasets (image
folders) are read through a ``DataLoader`` whose batches follow the same seeded order. Augmentation
(random crop with zero padding, horizontal flip) and normalisation then run on the batch, on the
training device, drawing every random number from the loader's own ``torch.Generator`` so that a run is
reproducible and a resumed run continues the same stream (see :meth:`BatchLoader.state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImageSet


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Zero-pad ``x`` ``[B, C, H, W]`` by ``padding`` and crop each image back at a random offset."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * padding + 1, (2, b), generator=gen).to(x.device)
    xp = F.pad(x, (padding, padding, padding, padding))
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B,1,H,1]
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B,1,1,W]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bidx, cidx, rows, cols]


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Flip each image of ``x`` ``[B, C, H, W]`` horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class _Lazy(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tensor:
        return self.data.reader(i)


class BatchLoader:
    """Iterates ``(images, labels, indices)`` batches: float images normalised, on ``device``.

    ``indices`` are positions in ``data`` (methods that need sample indices, such as CRD, use them).
    """

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = False, seed: int = 0, crop_padding: int = 0, flip: bool = False,
                 device: torch.device | str = "cpu", drop_last: bool = False, num_workers: int = 0):
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.crop_padding, self.flip, self.num_workers = crop_padding, flip, num_workers
        self.device = torch.device(device)
        self.drop_last = drop_last and len(data) > batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        if data.images is not None:
            self._images = data.images.to(self.device)
            self._labels = data.labels.to(self.device)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[Tensor]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _raw(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if self.data.images is not None:
            for idx in batches:
                dev_idx = idx.to(self.device)
                yield self._images[dev_idx], self._labels[dev_idx], idx
            return
        loader = torch.utils.data.DataLoader(_Lazy(self.data), batch_sampler=[b.tolist() for b in batches],
                                             num_workers=self.num_workers)
        for idx, x in zip(batches, loader):
            yield x.to(self.device, non_blocking=True), self.data.labels[idx].to(self.device), idx

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        augment = self.crop_padding > 0 or self.flip
        for x, y, idx in self._raw(self._batches()):
            x = x.float().div_(255.0)
            if augment:
                x = random_crop(x, self.crop_padding, self.generator)
                if self.flip:
                    x = random_flip(x, self.generator)
            yield (x - self.mean) / self.std, y, idx.to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
