"""Distillation on tabular data: an MLP teacher and a small MLP student on standardised ``[N, 20]`` features,
KD plus FitNets hints between explicit linear layers (``net.2`` of the student, ``net.4`` of the teacher).

    python examples/tabular.py --out runs/tabular            # about a minute on a 2-core CPU

The features are made by scikit-learn's ``make_classification`` (no download) and standardised with the
training split's statistics, as a user's own features would be. kdkit keeps them as float32 vectors
(``dataset_from_loaders`` sees ``[B, 20]`` batches: tensor inputs, no image normalisation, no
augmentation). Three runs: the teacher, the student alone, the student taught by the teacher. The last
line printed is a JSON summary of their test accuracies (tests/test_examples.py runs this file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdkit
from kdkit.data import Dataset


class TabularMLP(nn.Module):
    """``net``: Linear, ReLU, Linear, ReLU, (Linear, ReLU,) Linear: ``depth`` hidden layers of ``width``."""

    def __init__(self, num_classes: int = 4, in_channels: int = 20, width: int = 64, depth: int = 2):
        super().__init__()
        layers, d = [], in_channels
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@kdkit.register_model("tabular_teacher")
def tabular_teacher(num_classes: int = 4, in_channels: int = 20) -> TabularMLP:
    return TabularMLP(num_classes, in_channels, width=256, depth=3)  # net.4 is its second hidden Linear


@kdkit.register_model("tabular_student")
def tabular_student(num_classes: int = 4, in_channels: int = 20) -> TabularMLP:
    return TabularMLP(num_classes, in_channels, width=16, depth=2)  # net.2 is its second hidden Linear


def tabular_dataset(n: int = 20000, seed: int = 0) -> Dataset:
    x, y = make_classification(n_samples=n, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
                               n_clusters_per_class=3, class_sep=0.8, flip_y=0.02, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    cut = int(0.8 * n)
    mean, std = x[:cut].mean(0), x[:cut].std(0)
    x = (x - mean) / std  # standardised: values well outside [0, 1], kept as they are
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=256, shuffle=True)
    test = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=512)
    return kdkit.dataset_from_loaders(train, test, name="tabular")


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/tabular")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = tabular_dataset(args.samples)
    common = {"data": {"name": "tabular", "batch_size": 128, "val_fraction": 0.1},
              "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4}, "schedule": {"name": "cosine"}}

    def run(name: str, **recipe) -> dict:
        train = {"epochs": args.epochs, "seed": args.seed, "progress": False, "out_dir": args.out, "run_name": name}
        cfg = kdkit.load_config(base={**common, **recipe, "train": train})
        return kdkit.from_config(cfg, dataset=ds, log=lambda m: None).fit()

    teacher = run("teacher", model="tabular_teacher")
    alone = run("student", model="tabular_student")
    checkpoint = str(Path(args.out) / "teacher" / "checkpoint.pt")
    taught = run("student_kd_fitnets", model="tabular_student",
                 teacher={"name": "tabular_teacher", "checkpoint": checkpoint},
                 method=[{"name": "kd", "temperature": 4.0, "alpha": 0.9},
                         {"name": "fitnets", "student_layer": "net.2", "teacher_layer": "net.4", "beta": 1.0}])
    summary = {"teacher": teacher["test/top1"], "student": alone["test/top1"],
               "student_kd_fitnets": taught["test/top1"], "hint": taught.get("train/hint")}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
