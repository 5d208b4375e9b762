"""One batch loader for every dataset, with augmentation done on whole batches.

In-memory datasets are indexed directly (no DataLoader, no per-image Python); lazy datasets (image
folders) are read through a ``DataLoader`` whose batches follow the same seeded order. Augmentation
(random crop with zero padding, horizontal flip) and normalisation then run on the batch, on the
training device, drawing every random number from the loader's own ``torch.Generator`` so that a run is
reproducible and a resumed run continues the same stream (see :meth:`BatchLoader.state_dict`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import batch as batch_protocol
from ..batch import Batch
from ..errors import CheckpointError, ConfigError
from ..tasks.segmentation import IGNORE
from ..validate import check_rng
from .base import ImageSet


def random_crop(x: Tensor, padding: int, gen: torch.Generator, offsets: Tensor | None = None,
                fill: float = 0.0) -> Tensor:
    """Pad ``x`` ``[B, C, H, W]`` by ``padding`` (with ``fill``: zeros for images, the ignore index for masks)
    and crop each image back at a random offset (``offsets`` ``[2, B]``, drawn from ``gen`` when not given)."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    off = offsets if offsets is not None else crop_offsets(b, padding, gen)
    off = off.to(x.device)
    xp = F.pad(x, (padding, padding, padding, padding), value=fill)
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B,1,H,1]
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B,1,1,W]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bidx, cidx, rows, cols]


def crop_offsets(b: int, padding: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2 * padding + 1, (2, b), generator=gen, device=gen.device)


def random_flip(x: Tensor, gen: torch.Generator, flips: Tensor | None = None) -> Tensor:
    """Flip each image of ``x`` ``[B, C, H, W]`` horizontally with probability 1/2 (``flips`` ``[B]``
    bool, drawn from ``gen`` when not given)."""
    flip = flips if flips is not None else torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def random_scale(x: Tensor, scales: Tensor, mask: bool = False) -> Tensor:
    """Zoom each image of ``x`` ``[B, C, H, W]`` about its centre by ``scales`` ``[B]`` (> 1 enlarges), keeping
    its size: bilinear for images (zeros where the source ends), nearest neighbour for masks (``mask``:
    class ids, ``IGNORE`` where the source ends)."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scales.to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if not mask:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shifted = F.grid_sample((x + 1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return torch.where(shifted == 0, IGNORE, shifted.long() - 1)


def move_boxes(y: Tensor, p: dict[str, Tensor], size: tuple[int, int], padding: int, flip: bool) -> Tensor:
    """Detection targets ``[B, M, 5]`` (class, x1, y1, x2, y2) moved as :func:`random_scale`,
    :func:`random_crop` and :func:`random_flip` move their images (in that order, with the same parameters
    ``p``); boxes clipped to the image, and a box left empty marked as padding (-1)."""
    h, w = size
    cls, box = y[..., :1], y[..., 1:].clone()
    real = cls >= 0
    if "scales" in p:
        s = p["scales"].to(y.device, y.dtype)[:, None, None]
        centre = box.new_tensor([w / 2, h / 2, w / 2, h / 2])
        box = (box - centre) * s + centre
    if "offsets" in p and padding > 0:
        off = p["offsets"].to(y.device, y.dtype)  # [2, B]: rows, columns
        shift = torch.stack([padding - off[1], padding - off[0]], 1)  # [B, 2]: x, y
        box = box + shift.repeat(1, 2)[:, None, :]
    if flip and "flips" in p:
        flipped = torch.stack([w - box[..., 2], box[..., 1], w - box[..., 0], box[..., 3]], -1)
        box = torch.where(p["flips"].to(y.device)[:, None, None], flipped, box)
    box = torch.minimum(box.clamp_min(0), box.new_tensor([w, h, w, h]))
    keep = real & ((box[..., 2:3] - box[..., 0:1]) > 0) & ((box[..., 3:4] - box[..., 1:2]) > 0)
    return torch.where(keep, torch.cat([cls, box], -1), torch.full_like(y, -1.0))


def cutout(x: Tensor, size: int, centers: Tensor) -> Tensor:
    """Cutout (DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout",
    2017): zero a ``size`` x ``size`` square centred at ``centers`` ``[2, B]`` (clipped at the borders) in
    each image of the normalised batch ``x`` ``[B, C, H, W]``; zero is the dataset mean."""
    _, _, h, w = x.shape
    c = centers.to(x.device)
    lo_r, lo_c = (c[0] - size // 2)[:, None], (c[1] - size // 2)[:, None]
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_r = (rows >= lo_r) & (rows < lo_r + size)  # [B, H]
    in_c = (cols >= lo_c) & (cols < lo_c + size)  # [B, W]
    hole = in_r[:, :, None] & in_c[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


def model_input(x: Tensor, images: bool = True) -> Tensor:
    """A stored batch as a network takes it: uint8 images scaled to [0, 1] (``images``), other floats as
    float32 (vectors and float images keep their precision until here), integers (token ids) as they are."""
    if x.dtype == torch.uint8 and images:
        return x.float().div_(255.0)
    return x.float() if x.is_floating_point() else x


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

    In-memory images are moved to ``device`` once, as uint8; each batch is gathered, augmented and
    normalised there. Every random number (order, crop offsets, flips, cutout centres) comes from one
    ``torch.Generator`` on ``device``, so a run is reproducible and a resumed run continues the same
    stream. With ``world_size > 1`` (distributed training) every rank draws the same global order and the
    same augmentation for the whole global batch of ``batch_size`` images and keeps its own contiguous
    share of ``batch_size // world_size``; evaluation sets are split into ``world_size`` disjoint shards.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 shuffle: bool = False, seed: int = 0, crop_padding: int = 0, flip: bool = False,
                 cutout: int = 0, device: torch.device | str = "cpu", drop_last: bool = False,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, replay_views: int = 0, views: int = 1,
                 scale: tuple[float, float] | None = None):
        if world_size > 1 and shuffle and batch_size % world_size:
            raise ConfigError(f"data.batch_size ({batch_size}) must be a multiple of the number of processes "
                              f"({world_size}): it is the global batch, split evenly across them")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.crop_padding, self.flip, self.cutout, self.num_workers = crop_padding, flip, cutout, num_workers
        self.scale = scale  # random zoom range (segmentation: images and masks move together)
        # masks [N, H, W] (integers) and boxes [N, M, 5] (floats) are augmented with their images
        self.boxes = data.labels.dim() == 3 and data.labels.is_floating_point()
        self.dense = data.labels.dim() > 1 and not self.boxes
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.drop_last = drop_last and len(data) > batch_size
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.generator = torch.Generator(device=gen_device).manual_seed(seed)
        # images: uint8 (or floats in [0, 1]) normalised per channel; other inputs (vectors, sequences, token
        # ids: no mean and std) are passed on as they are stored, floats as float32
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) if len(mean) else None
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) if len(std) else None
        if data.images is not None:
            self._images = batch_protocol.to_device(data.images, self.device)
            self._labels = data.labels.to(self.device)
        self.epoch = 0  # epochs started (training loaders)
        self.replay_views = replay_views if self.augments else 0
        if views > 1 and not self.augments:
            raise ConfigError(f"data.views={views}: several views of a batch need training augmentation (data.augment "
                              "on, with a dataset that crops or flips, or data.cutout)")
        if views > 1 and (self.dense or self.boxes):
            raise ConfigError("data.views: several views of a batch are for classification; masks and boxes follow "
                              "one view")
        if views > 1 and self.replay_views:
            raise ConfigError("data.views and data.replay_views cannot be combined: replayed views are one fixed "
                              "input per sample and epoch")
        self.views = views
        self._replay: dict[str, Tensor] = {}
        if self.replay_views:
            self._replay = self._draw_replay_table(seed)

    @property
    def augments(self) -> bool:
        return self.shuffle and (self.crop_padding > 0 or self.flip or self.cutout > 0 or self.scale is not None)

    @property
    def num_views(self) -> int:
        """Distinct inputs per sample over a run: 1 without augmentation, ``replay_views`` with replayed
        augmentation, 0 (unbounded) with fresh random augmentation every epoch."""
        return 1 if not self.augments else self.replay_views

    def view_keys(self, idx: Tensor) -> Tensor:
        """Keys of the exact inputs of the current epoch's batch ``idx``: ``view * N + idx``."""
        if not self.replay_views:
            return idx
        return idx + ((self.epoch - 1) % self.replay_views) * len(self.data)

    def _draw_replay_table(self, seed: int) -> dict[str, Tensor]:
        """Fixed augmentation parameters for every (view, sample): the inputs repeat exactly every
        ``replay_views`` epochs, so the teachers' outputs on them can be cached."""
        gen = torch.Generator(device=self.generator.device).manual_seed(seed + 7919)
        n, r, table = len(self.data), self.replay_views, {}
        if self.crop_padding > 0:
            table["offsets"] = torch.stack([crop_offsets(n, self.crop_padding, gen) for _ in range(r)])
        if self.flip:
            table["flips"] = torch.rand(r, n, generator=gen, device=gen.device) < 0.5
        if self.cutout > 0:
            table["centers"] = torch.stack([
                torch.stack([torch.randint(0, s, (n,), generator=gen, device=gen.device) for s in self.data_size])
                for _ in range(r)])
        if self.scale is not None:
            lo, hi = self.scale
            table["scales"] = lo + (hi - lo) * torch.rand(r, n, generator=gen, device=gen.device)
        return table

    def __len__(self) -> int:
        n = len(self.data)
        if not self.shuffle and self.world_size > 1:
            n = len(range(self.rank, n, self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[Tensor]:
        """The global batches of one epoch (indices on the generator's device)."""
        n, gen = len(self.data), self.generator
        if self.shuffle:
            order = torch.randperm(n, generator=gen, device=gen.device)
        else:
            order = torch.arange(n)
            if self.world_size > 1:
                order = order[self.rank::self.world_size]
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _local(self, t: Tensor) -> Tensor:
        """This rank's share of a global training batch (the last dimension)."""
        if self.world_size == 1 or not self.shuffle:
            return t
        share = t.shape[-1] // self.world_size
        return t[..., self.rank * share:(self.rank + 1) * share]

    def _raw(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if self.data.images is not None:
            for idx in batches:
                dev_idx = idx.to(self.device)
                yield batch_protocol.index(self._images, dev_idx), self._labels[dev_idx], idx
            return
        batches = [b.cpu() for b in batches]
        loader = torch.utils.data.DataLoader(_Lazy(self.data), batch_sampler=[b.tolist() for b in batches],
                                             num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        for idx, x in zip(batches, loader):
            yield x.to(self.device, non_blocking=True), self.data.labels[idx].to(self.device), idx

    def _augment_params(self, b: int) -> dict[str, Tensor]:
        """Random numbers for one global batch of ``b`` images, drawn in a fixed order."""
        gen, p = self.generator, {}
        if self.crop_padding > 0:
            p["offsets"] = crop_offsets(b, self.crop_padding, gen)
        if self.flip:
            p["flips"] = torch.rand(b, generator=gen, device=gen.device) < 0.5
        if self.cutout > 0:
            p["centers"] = torch.stack([torch.randint(0, s, (b,), generator=gen, device=gen.device)
                                        for s in self.data_size])
        if self.scale is not None:  # drawn last: the classification streams stay as they were
            lo, hi = self.scale
            p["scales"] = lo + (hi - lo) * torch.rand(b, generator=gen, device=gen.device)
        return {k: self._local(v) for k, v in p.items()}

    @functools.cached_property
    def data_size(self) -> tuple[int, int]:
        """Image height and width (read once: for lazy sets it costs reading an image)."""
        if self.data.images is not None:
            return tuple(self.data.images.shape[-2:])
        return tuple(self.data.reader(0).shape[-2:])

    def fingerprint(self) -> dict[str, str]:
        """What determines the training inputs, for checking a stored teacher cache against."""
        h = hashlib.sha256()
        for t in [self.data.labels, self.mean, self.std, *self._replay.values()]:
            if t is not None:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if self.data.images is not None:
            if batch_protocol.structured(self.data.images):  # several inputs: their form, then each one's bytes
                h.update(batch_protocol.signature(self.data.images).encode())
            for t in batch_protocol.tensors(self.data.images):
                if t.dtype != torch.uint8:  # the bytes alone would not tell float32 from int32
                    h.update(str(t.dtype).encode())
                h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        scale = f",{self.scale[0]},{self.scale[1]}" if self.scale is not None else ""
        return {"inputs": h.hexdigest(), "augment": f"{self.crop_padding},{self.flip},{self.cutout}{scale}",
                "views": str(self.num_views)}

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        augment = self.augments
        if self.shuffle:
            self.epoch += 1
        view = (self.epoch - 1) % self.replay_views if self.replay_views else 0
        batches = self._batches()
        if self.shuffle and self.world_size > 1:
            batches = [self._local(b) for b in batches]  # same global draw on every rank, own share
        # augmentation parameters are drawn per global batch, after the order (as the order is drawn first)
        for x, y, idx in self._raw(batches):
            if augment and self.replay_views:
                p = self._view_params(view, idx)
            elif augment:
                p = self._augment_params(len(idx) * self.world_size)
            else:
                p = None
            if self.views > 1:  # each view its own augmentation of the same images: [views, B, ...]
                extra = [self._augment_params(len(idx) * self.world_size) for _ in range(self.views - 1)]
                yield Batch(torch.stack([self._transform(x, q) for q in [p, *extra]]), y, idx.to(self.device))
                continue
            yield Batch(self._transform(x, p), self._target(y, p), idx.to(self.device))

    def _view_params(self, view: int, idx: Tensor) -> dict[str, Tensor]:
        dev_idx = idx.to(self.generator.device)
        return {k: v[view][..., dev_idx] for k, v in self._replay.items()}

    def _transform(self, x: Tensor, p: dict[str, Tensor] | None) -> Tensor:
        """Stored batch -> the model's input: images (uint8, or floats in [0, 1]) augmented (with parameters
        ``p``) and normalised as float32; other inputs as stored, floats as float32 (see :func:`model_input`)."""
        if self.mean is None:  # not images: each input as stored, floats as float32
            return batch_protocol.apply(lambda t: model_input(t, images=False), x)
        x = model_input(x)
        if p is not None:
            if "scales" in p:
                x = random_scale(x, p["scales"])
            x = random_crop(x, self.crop_padding, self.generator, p.get("offsets"))
            if self.flip:
                x = random_flip(x, self.generator, p["flips"])
        x = (x - self.mean) / self.std
        if p is not None and self.cutout > 0:
            x = cutout(x, self.cutout, p["centers"])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _target(self, y: Tensor, p: dict[str, Tensor] | None) -> Tensor:
        """Stored labels -> the task's targets: class ids as they are; masks ``[B, H, W]`` as int64, moved by
        the same crop, flip and zoom as their images (pixels from outside the image: ``IGNORE``); boxes moved
        with them (:func:`move_boxes`)."""
        if self.boxes:
            return y if p is None else move_boxes(y, p, self.data_size, self.crop_padding, self.flip)
        if not self.dense:
            return y
        y = y.long()
        if p is not None:
            y = y[:, None]
            if "scales" in p:
                y = random_scale(y, p["scales"], mask=True)
            y = random_crop(y, self.crop_padding, self.generator, p.get("offsets"), fill=IGNORE)
            if self.flip:
                y = random_flip(y, self.generator, p["flips"])
            y = y[:, 0]
        return y

    def iter_views(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Every distinct training input, in order: ``(images, keys)`` over all samples of every view
        (see :meth:`view_keys`). Only for loaders whose inputs repeat (``num_views >= 1``)."""
        if self.num_views < 1:
            raise ConfigError("the training inputs are freshly augmented every epoch; they cannot be enumerated")
        n = len(self.data)
        for view in range(self.num_views):
            for idx in torch.arange(n).split(batch_size or self.batch_size):
                (x, _, _), = self._raw([idx])
                p = self._view_params(view, idx) if self.replay_views else None
                yield self._transform(x, p), (idx + view * n).to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def check_state(self, state: Any, source: str) -> None:
        """Refuse a saved state this loader cannot take (before anything is restored)."""
        if not isinstance(state, dict) or type(state.get("epoch", 0)) is not int or state.get("epoch", 0) < 0:
            raise CheckpointError(f"{source}: the data loader state is malformed")
        check_rng(state.get("generator"), source, "data loader", self.generator.device)

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        try:
            self.generator.set_state(state["generator"])
        except RuntimeError as e:
            raise CheckpointError(f"the data loader's random state does not fit this device "
                                  f"({self.generator.device}): {e}") from None
