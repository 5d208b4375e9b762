"""``kdkit demo``: what distillation buys, on scikit-learn's digits, in well under a minute on a laptop CPU.

For each seed: a teacher (``cnn_medium``, 288k parameters) trained with the labels of the whole training
split (1,294 images); then the same small student (``cnn_tiny``, 18k parameters) trained from scratch and
with Hinton KD, twice: on the whole training split, and on its first 100 images only (a label-scarce
transfer set, as in Hinton et al. 2015, sec. 3: the teacher's soft targets carry much of what 100 labels
cannot). The regime was chosen by measurement (``benchmarks/demo_candidates.py``,
docs/results/demo_candidates.md): with the whole split KD is within about half a point of scratch on this
easy dataset; with 100 images it is several points better on every seed measured.

Every run goes through the same Trainer and checkpoints as ``kdkit train``/``kdkit distill``, into
``runs/demo`` by default (an earlier demo's runs there are replaced), and ``kdkit report`` writes its
page over them. The table reports test accuracy
(mean and standard deviation over seeds), agreement with the teacher, parameters and time, whatever they
are.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .config import load_config

TEACHER, STUDENT = "cnn_medium", "cnn_tiny"
SCARCE = 100  # training images of the label-scarce student
KD = {"name": "kd", "temperature": 4.0, "alpha": 0.9}

# name -> (model, method, training images or None for the whole split, epochs, batch size)
RECIPES: dict[str, tuple[str, Any, int | None, int, int]] = {
    "teacher": (TEACHER, "vanilla", None, 15, 64),
    "scratch, all images": (STUDENT, "vanilla", None, 15, 64),
    "kd, all images": (STUDENT, KD, None, 15, 64),
    f"scratch, {SCARCE} images": (STUDENT, "vanilla", SCARCE, 60, 32),
    f"kd, {SCARCE} images": (STUDENT, KD, SCARCE, 60, 32),
}


def demo_config(kind: str, seed: int, out: Path, teacher_ckpt: str | None = None, epochs: int | None = None):
    model, method, limit, default_epochs, batch = RECIPES[kind]
    base = {"model": model, "method": method, "data": {"name": "digits", "batch_size": batch, "limit_train": limit},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {"epochs": epochs or default_epochs, "seed": seed, "device": "cpu", "progress": False,
                      "out_dir": str(out), "run_name": f"seed{seed}-{kind.replace(', ', '-').replace(' ', '_')}"}}
    if teacher_ckpt:
        base["teacher"] = {"name": TEACHER, "checkpoint": teacher_ckpt}
    return load_config(base=base)


def run_demo(seeds: int = 3, epochs: int | None = None, out: Path | None = None) -> list[dict[str, Any]]:
    import torch

    from .build import from_config
    from .models import count_params, create_model
    from .report import collect, write_report

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(out or "runs/demo")
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say(f"kdkit demo: digits (1,797 real 8x8 images), teacher {TEACHER}, student {STUDENT} on all training "
        f"images and on {SCARCE}, {seeds} seed(s), runs in {out}")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in RECIPES}
    t_start = time.perf_counter()
    for seed in range(seeds):
        ckpt = None
        for kind in RECIPES:
            uses_teacher = RECIPES[kind][1] is KD
            cfg = demo_config(kind, seed, out, ckpt if uses_teacher else None, epochs)
            run_dir = out / cfg.train.run_name
            if run_dir.is_dir():  # an earlier demo's run of the same name: the demo starts afresh
                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            trainer = from_config(cfg, run_dir=run_dir, log=lambda _msg: None)
            r = trainer.fit()
            dt = time.perf_counter() - t0
            if kind == "teacher":
                ckpt = str(trainer.run_dir / "checkpoint.pt")
            results[kind].append({"top1": r["test/top1"], "agreement": r.get("test/agreement", float("nan")),
                                  "time": dt})
            say(f"  seed {seed}  {kind:18s} test top1 {r['test/top1']:6.2f}%  ({dt:.1f}s)")
    total = time.perf_counter() - t_start
    rows = []
    for kind, runs in results.items():
        model = RECIPES[kind][0]
        acc = [r["top1"] for r in runs]
        agree = [r["agreement"] for r in runs if r["agreement"] == r["agreement"]]
        rows.append({
            "run": kind, "model": model, "params": count_params(create_model(model, 10, 1)),
            "top1_mean": statistics.mean(acc), "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "agreement": statistics.mean(agree) if agree else None,
            "time_s": statistics.mean(r["time"] for r in runs),
        })
    print(format_table(rows, seeds, total))
    written = write_report(collect([out]), out / "report")
    print(f"\nReport (learning curves, every loss term, config differences): {written['report.html']}")
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
