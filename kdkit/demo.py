"""``kdkit demo``: distillation on scikit-learn's digits, end to end, in about a minute on a laptop CPU.

For each seed: train a teacher (``cnn_medium``, 288k parameters) with labels, then the same small
student (``cnn_tiny``, 18k parameters) three ways: from scratch, with Hinton KD, and with attention
transfer. Every run goes through the same Trainer and checkpoints as ``kdkit train``/``kdkit distill``;
the student runs load the teacher from its checkpoint. The table reports test accuracy (mean and
standard deviation over seeds), agreement with the teacher, parameters and time, whatever they are.

Attention transfer uses the student's and teacher's ``stage1`` and ``stage2`` (8x8 and 4x4 maps): the
last stage is 2x2 on 8x8 digits, where the paper's beta=1000 (set for 32x32 CIFAR maps) makes the
attention term's gradient about 190 times the cross-entropy's at initialisation and the student does not
learn (see docs/methods.md).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import load_config

TEACHER, STUDENT = "cnn_medium", "cnn_tiny"
EPOCHS = 15

RECIPES: dict[str, dict[str, Any]] = {
    "teacher": {"model": TEACHER, "method": "vanilla"},
    "scratch": {"model": STUDENT, "method": "vanilla"},
    "kd": {"model": STUDENT, "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9}},
    "at": {"model": STUDENT,
           "method": {"name": "at", "student_layers": ["stage1", "stage2"], "teacher_layers": ["stage1", "stage2"]}},
}


def demo_config(kind: str, seed: int, epochs: int, out: Path, teacher_ckpt: str | None = None):
    base = {**RECIPES[kind], "data": {"name": "digits", "batch_size": 64},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {"epochs": epochs, "seed": seed, "device": "cpu", "progress": False, "out_dir": str(out),
                      "run_name": f"seed{seed}-{kind}"}}
    if teacher_ckpt:
        base["teacher"] = {"name": TEACHER, "checkpoint": teacher_ckpt}
    return load_config(base=base)


def run_demo(seeds: int = 3, epochs: int | None = None, out: Path | None = None) -> list[dict[str, Any]]:
    import torch

    from .build import from_config
    from .models import count_params, create_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    epochs = epochs or EPOCHS
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="kdkit-demo-")
        out = Path(tmp.name)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say(f"kdkit demo: digits (1,797 real 8x8 images), teacher {TEACHER}, student {STUDENT}, "
        f"{epochs} epochs, {seeds} seed(s)")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in RECIPES}
    t_start = time.perf_counter()
    try:
        for seed in range(seeds):
            ckpt = None
            for kind in RECIPES:
                cfg = demo_config(kind, seed, epochs, out, None if kind in ("teacher", "scratch") else ckpt)
                t0 = time.perf_counter()
                trainer = from_config(cfg, log=lambda _msg: None)
                r = trainer.fit()
                dt = time.perf_counter() - t0
                if kind == "teacher":
                    ckpt = str(trainer.run_dir / "checkpoint.pt")
                results[kind].append({"top1": r["test/top1"], "agreement": r.get("test/agreement", float("nan")),
                                      "time": dt})
                say(f"  seed {seed}  {kind:8s} test top1 {r['test/top1']:6.2f}%  ({dt:.1f}s)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = time.perf_counter() - t_start
    rows = []
    for kind, runs in results.items():
        model = RECIPES[kind]["model"]
        acc = [r["top1"] for r in runs]
        agree = [r["agreement"] for r in runs if r["agreement"] == r["agreement"]]
        rows.append({
            "run": kind, "model": model, "params": count_params(create_model(model, 10, 1)),
            "top1_mean": statistics.mean(acc), "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "agreement": statistics.mean(agree) if agree else None,
            "time_s": statistics.mean(r["time"] for r in runs),
        })
    print(format_table(rows, seeds, total))
    return rows


def format_table(rows: list[dict[str, Any]], seeds: int, total: float) -> str:
    lines = [f"\nDigits test accuracy over {seeds} seed(s) (mean ± std), {total:.0f}s in all\n",
             "| run | model | params | test top-1 (%) | agreement with teacher (%) | time per run (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        agree = f"{r['agreement']:.2f}" if r["agreement"] is not None else "-"
        lines.append(f"| {r['run']} | {r['model']} | {r['params']:,} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} "
                     f"| {agree} | {r['time_s']:.1f} |")
    return "\n".join(lines)
