"""Attention transfer on tiny feature maps: how the paper's beta behaves on 8x8 digits.

Trains a cnn_medium teacher on digits, then cnn_tiny students for the same epochs: from scratch, and
with AT on all three stage pairs (8x8, 4x4, 2x2 maps) or on the first two only, at beta 1000, 100 and
10. Also prints the ratio of the AT gradient norm to the cross-entropy gradient norm at initialisation.

    python benchmarks/at_small_maps.py [--epochs 5] [--out runs/bench-at]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from kdkit import from_config, load_config
from kdkit.build import build


def cfg(out: Path, name: str, epochs: int, **sections):
    base = {"data": {"name": "digits"}, "model": "cnn_tiny",
            "train": {"epochs": epochs, "progress": False, "out_dir": str(out), "run_name": name}}
    base.update(sections)
    return load_config(base=base)


def grad_ratio(c) -> float:
    b = build(c)
    x, y, i = next(iter(b.loaders.train))
    terms = b.distiller(x, y, i)
    norms = {}
    for k, v in terms.items():
        b.distiller.zero_grad()
        v.backward(retain_graph=True)
        norms[k] = torch.sqrt(sum(p.grad.pow(2).sum() for p in b.distiller.parameters() if p.grad is not None))
    return (norms["at"] / norms["ce"]).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="runs/bench-at")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    quiet = lambda *_: None  # noqa: E731
    from_config(cfg(out, "teacher", args.epochs, model="cnn_medium"), log=quiet).fit()
    teacher = {"name": "cnn_medium", "checkpoint": str(out / "teacher" / "checkpoint.pt")}
    rows = [("vanilla", "-", "-", from_config(cfg(out, "vanilla", args.epochs), log=quiet).fit()["test/top1"], None)]
    for beta in (1000.0, 100.0, 10.0):
        for label, layers in (("stage1-3", None), ("stage1-2", ["stage1", "stage2"])):
            m = {"name": "at", "beta": beta}
            if layers:
                m.update(student_layers=layers, teacher_layers=layers)
            c = cfg(out, f"at-{beta:g}-{label}", args.epochs, teacher=teacher, method=m)
            ratio = grad_ratio(c)
            rows.append(("at", f"{beta:g}", label, from_config(c, log=quiet).fit()["test/top1"], ratio))
    print(f"\ndigits, cnn_medium -> cnn_tiny, {args.epochs} epochs, seed 0\n")
    print("| method | beta | layer pairs | test top-1 (%) | AT/CE gradient norm at init |")
    print("|---|---:|---|---:|---:|")
    for method, beta, layers, acc, ratio in rows:
        print(f"| {method} | {beta} | {layers} | {acc:.2f} | {'-' if ratio is None else f'{ratio:.1f}'} |")


if __name__ == "__main__":
    main()
