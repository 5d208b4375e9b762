"""The dense-task results tables: segmentation (issue 27, docs/results/fashion_canvas_segmentation.md) and
detection (issue 28, docs/results/fashion_canvas_detection.md).

    python benchmarks/dense_table.py --task segmentation   # resumable; runs in /work/kdkit_runs/segmentation
    python benchmarks/dense_table.py --task detection      # resumable; runs in /work/kdkit_runs/detection
    python benchmarks/dense_table.py --task detection --write-only

A teacher trained on the whole training split of the canvases; a student from scratch and with each
method of the registry written for the task (``kdkit sweep --methods offline`` over the task's base
recipe): each method's weights chosen on the validation metric (mIoU, mAP) by a small search with the same
trial count as vanilla's learning rate and weight decay, then the best configuration over 3 seeds on test
(mean ± std, and the difference to vanilla paired by seed). The cost of each network (parameters, MACs,
CPU latency) comes from ``kdkit profile``. Resumable: finished trials and runs are kept in ``--out``; run
the same command again and it goes on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sweep_tables import train_once, write_table

from kdkit.sweep import parse_sweep
from kdkit.sweep.compare import RANKING_NUMERIC, markdown_table, ranking_table

# what differs between the tasks: data, networks, regime, the metric's words and the extra columns
TASKS: dict[str, dict[str, Any]] = {
    "segmentation": {"data": "fashion_canvas", "teacher": "unet_w16", "student": "unet_w8", "lr": 0.05,
                     "metric": "miou", "label": "mIoU", "extra": (), "doc": "fashion_canvas_segmentation"},
    "detection": {"data": "fashion_canvas_boxes", "teacher": "gfl_w16", "student": "gfl_w8", "lr": 0.02,
                  "metric": "map", "label": "mAP", "extra": ("ap50",), "doc": "fashion_canvas_detection"},
}


def base_recipe(args: argparse.Namespace, model: str, epochs: int, limit: int | None,
                teacher: Path | None = None) -> dict[str, Any]:
    task = TASKS[args.task]
    recipe: dict[str, Any] = {
        "task": args.task, "model": model,
        "data": {"name": task["data"], "batch_size": 32, "limit_train": limit, "val_fraction": 0.1},
        "optim": {"name": "sgd", "lr": task["lr"], "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "seed": 0, "progress": False, "threads": args.threads, "device": args.device},
    }
    if teacher is not None:
        recipe["teacher"] = {"name": args.teacher, "checkpoint": str(teacher)}
    return recipe


def cost_rows(checkpoints: dict[str, Path], threads: int, metric: str) -> list[list[str]]:
    from kdkit.export import profile

    rows = []
    for label, ckpt in checkpoints.items():
        p = profile(ckpt, batches=(1, 32), runs=20, threads=threads)
        lat = p["latency"]
        rows.append([label, f"{p['params']:,}", f"{p['macs'] / 1e6:.1f} M",
                     f"{lat['1']['eager']['median_ms']:.2f}", f"{lat['32']['eager']['median_ms']:.1f}",
                     f"{p['test_' + metric]:.2f}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="segmentation")
    ap.add_argument("--teacher", help="default: unet_w16 (segmentation), gfl_w16 (detection)")
    ap.add_argument("--student", help="default: unet_w8, gfl_w8")
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--limit-train", type=int, default=4000)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", default="offline", help="offline (every method of the task) or a list")
    ap.add_argument("--out", help="default: /work/kdkit_runs/<task>")
    ap.add_argument("--docs", default="docs/results")
    ap.add_argument("--methods-doc", default="docs/methods.md")
    ap.add_argument("--write-only", action="store_true", help="rewrite the table from the runs so far")
    args = ap.parse_args()
    task = TASKS[args.task]
    args.teacher, args.student = args.teacher or task["teacher"], args.student or task["student"]
    args.out = args.out or f"/work/kdkit_runs/{args.task}"
    metric, label = task["metric"], task["label"]
    out, t0 = Path(args.out), time.time()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"teacher: {args.teacher}, {args.teacher_epochs} epochs on the whole training split")
    rows_t = train_once(base_recipe(args, args.teacher, args.teacher_epochs, None), out / "teacher", args.write_only)
    teacher = out / "teacher" / "checkpoint.pt"
    sweep = {"base": base_recipe(args, args.student, args.epochs, args.limit_train, teacher),
             "methods": args.methods, "trials": args.trials, "sampler": "tpe", "pruner": "median", "seed": 0,
             "seeds": [int(s) for s in args.seeds.split(",")], "out": str(out / "methods"), "name": args.task,
             "method_settings": {}}
    cfg = parse_sweep(sweep, "dense_table")
    command = "python benchmarks/dense_table.py " + " ".join(a for a in sys.argv[1:] if a != "--write-only")
    name = task["doc"]

    def write(rows: list[dict[str, Any]], pending: list[str]) -> None:
        spent = sum(r["train_s"] for r in rows)
        head, cells = ranking_table(cfg.metric, rows)
        for extra in task["extra"]:  # another test metric of the final runs (detection: AP50)
            head.insert(4, f"test/{extra} (mean ± std)")
            for r, row in zip(rows, cells):
                final = out / "methods" / r["method"] / "final.json"
                values = [run[f"test/{extra}"] for run in json.loads(final.read_text())["runs"]
                          if f"test/{extra}" in run] if final.is_file() else []
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                row.insert(4, f"{statistics.mean(values):.2f} ± {sd:.2f}" if values else "-")
        losers = [r["method"] for r in rows if r["method"] != "vanilla" and r["delta_mean"] is not None
                  and r["delta_mean"] <= 0]
        text = [f"# fashion_canvas {args.task}, {args.teacher} -> {args.student}: each method's weights chosen "
                f"by a sweep on validation {label}", "", f"Generated by `{command}` (resumable; runs in {out}).", "",
                f"Teacher {args.teacher}: {rows_t[-1]['test/' + metric]:.2f} test {label} ({args.teacher_epochs} "
                f"epochs on the whole training split). Students: {args.student}, {args.epochs} epochs on the first "
                f"{args.limit_train} training canvases (a 10% validation split carved from the training canvases by "
                f"seed 0), batch 32, SGD lr {task['lr']} momentum 0.9 cosine, weight decay 5e-4, augmentation: zoom "
                f"0.75-1.25, crop with padding 8, flip; {args.threads} CPU threads.", "",
                f"Budget: {args.trials} trials per method (TPE; median pruning, never before epoch "
                f"{cfg.pruner_warmup}), the same for vanilla over the learning rate and weight decay; the ranges "
                "are in kdkit/sweep/methods.py. Final runs: the best configuration over seeds "
                f"{args.seeds} on the test canvases, mean ± std; vs vanilla: mean ± std of the per-seed differences.",
                "", f"Cost: {spent / 3600:.2f} h of training (all trials and final runs; teacher not counted) on the "
                "2-core development machine.", "", f"## Ranking (by validation {label})", ""]
        shift = len(task["extra"])  # the added columns sit at 4.., right-aligned like the ranking's numbers
        numeric = {i + (i >= 4) * shift for i in RANKING_NUMERIC} | set(range(4, 4 + shift))
        text += markdown_table(head, cells, numeric).splitlines()
        text += ["", f"Not better than the student from scratch on test: {', '.join(losers) if losers else 'none'}."]
        write_table(args, name, args.task, text, rows, pending, f"benchmarks/dense_table.py --task {args.task}",
                    {"lr": task["lr"], "weight_decay": 5e-4})
        hours = (time.time() - t0) / 3600
        say(f"wrote {Path(args.docs) / name}.md ({len(rows)} methods, {len(pending)} to go; {hours:.2f} h)")

    from kdkit.sweep.compare import read_methods, run_methods

    if args.write_only:
        write(*read_methods(cfg))
    else:
        run_methods(cfg, log=say, after=write)
        vanilla = json.loads((out / "methods" / "vanilla" / "final.json").read_text())["runs"][0]["run"]
        networks = {f"teacher {args.teacher}": teacher,
                    f"student {args.student} (from scratch, seed 0)": Path(vanilla) / "checkpoint.pt"}
        cost = cost_rows(networks, args.threads, metric)
        doc = Path(args.docs) / f"{name}.md"
        doc.write_text(doc.read_text() + "\n## Size and speed (kdkit profile, CPU)\n\n" + markdown_table(
            ["network", "params", "MACs per canvas", "ms, batch 1", "ms, batch 32", f"test {label}"], cost,
            {1, 2, 3, 4, 5}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
