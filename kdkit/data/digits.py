"""scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits (UCI optdigits test set).

It ships inside scikit-learn, so it needs no download: it is kdkit's embedded default. The 17 grey
levels (0..16) are scaled to uint8. A fixed 20% test set is drawn with seed 0 (the same for every run);
the training seed then draws the validation split from the rest.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from .base import Dataset, ImageSet, channel_stats

TEST_FRACTION = 0.2


def load_digits_dataset(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.clip(bunch.images * 16, 0, 255).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    train = ImageSet(labels[train_idx], images=images[train_idx])
    test = ImageSet(labels[test_idx], images=images[test_idx])
    mean, std = channel_stats(train.images)
    return Dataset("digits", train, test, 10, 1, (8, 8), mean, std, crop_padding=0, flip=False,
                   classes=[str(i) for i in range(10)])
