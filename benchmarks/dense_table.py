"""The results tables of the tasks beyond image classification: segmentation (issue 27,
docs/results/fashion_canvas_segmentation.md), detection (issue 28, docs/results/fashion_canvas_detection.md)
and text classification (issue 29, docs/results/austen_text.md).

    python benchmarks/dense_table.py --task segmentation   # resumable; runs in /work/kdkit_runs/segmentation
    python benchmarks/dense_table.py --task detection      # resumable; runs in /work/kdkit_runs/detection
    python benchmarks/dense_table.py --task text           # resumable; runs in /work/kdkit_runs/text
    python benchmarks/dense_table.py --task detection --write-only

A teacher trained on the whole training split; a student from scratch and with each
method of the registry written for the task (``kdkit sweep --methods offline`` over the task's base
recipe): each method's weights chosen on the validation metric (mIoU, mAP) by a small search with the same
trial count as vanilla's learning rate and weight decay, then the best configuration over 3 seeds on test
(mean ± std, and the difference to vanilla paired by seed). The cost of each network (parameters, MACs,
CPU latency) comes from ``kdkit profile``. Resumable: finished trials and runs are kept in ``--out``; run
the same command again and it goes on. On another machine too: the finished methods' result files are kept
in ``<docs>/<table's name>/`` (benchmarks/sweep_tables.py says how).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sweep_tables import PAUSES, cpu_clause, ledger_restore, train_once, write_table

from kdkit.sweep import parse_sweep
from kdkit.sweep.compare import RANKING_NUMERIC, markdown_table, ranking_table

# what differs between the tasks: data, networks, regime, the metric's words and the extra columns
CANVAS = ("batch 32, SGD lr {lr} momentum 0.9 cosine, weight decay 5e-4, augmentation: zoom 0.75-1.25, crop with "
          "padding 8, flip")
TASKS: dict[str, dict[str, Any]] = {
    "segmentation": {"data": {"name": "fashion_canvas"}, "teacher": "unet_w16", "student": "unet_w8",
                     "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, "regime": CANVAS,
                     "metric": "miou", "label": "mIoU", "extra": (), "doc": "fashion_canvas_segmentation",
                     "title": "fashion_canvas segmentation", "samples": "canvases", "sample": "canvas", "limit": 4000},
    "detection": {"data": {"name": "fashion_canvas_boxes"}, "teacher": "gfl_w16", "student": "gfl_w8",
                  "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4}, "regime": CANVAS,
                  "metric": "map", "label": "mAP", "extra": ("ap50",), "doc": "fashion_canvas_detection",
                  "title": "fashion_canvas detection", "samples": "canvases", "sample": "canvas", "limit": 4000},
    # the recipes of configs/austen (scripts/make_recipes.py): BERTs trained here from scratch
    "text": {"task": "text_classification", "data": {"name": "austen", "max_length": 64, "vocab_size": 8000},
             "teacher": {"name": "hf_bert", "kwargs": {"layers": 4, "hidden": 256, "heads": 4}},
             "student": {"name": "hf_bert", "kwargs": {"layers": 2, "hidden": 128, "heads": 4}},
             "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
             "regime": "batch 32, AdamW lr {lr} weight decay 0.01, cosine with a half-epoch warm-up, 64 tokens, a "
                       "WordPiece vocabulary of 8000 learnt on the training passages",
             "metric": "accuracy", "label": "accuracy", "extra": ("macro_f1",), "doc": "austen_text",
             "title": "austen text classification", "samples": "passages", "sample": "passage", "limit": 6000,
             "teacher_epochs": 6, "teacher_lr": 5e-4, "epochs": 8},
}


def _name(model: Any) -> str:
    if isinstance(model, dict):
        kw = model.get("kwargs", {})
        return f"{model['name']} {kw.get('layers')}x{kw.get('hidden')}" if "layers" in kw else model["name"]
    return model


def base_recipe(args: argparse.Namespace, model: Any, epochs: int, limit: int | None,
                teacher: Path | None = None) -> dict[str, Any]:
    task = TASKS[args.task]
    recipe: dict[str, Any] = {
        "task": task.get("task", args.task), "model": model,
        "data": {**task["data"], "batch_size": 32, "limit_train": limit, "val_fraction": 0.1},
        "optim": dict(task["optim"]),
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "seed": 0, "progress": False, "threads": args.threads, "device": args.device},
    }
    if teacher is not None:
        spec = args.teacher if isinstance(args.teacher, dict) else {"name": args.teacher}
        recipe["teacher"] = {**spec, "checkpoint": str(teacher)}
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
    ap.add_argument("--teacher", help="default: unet_w16 (segmentation), gfl_w16 (detection), hf_bert 4x256 (text)")
    ap.add_argument("--student", help="default: unet_w8, gfl_w8, hf_bert 2x128")
    ap.add_argument("--teacher-epochs", type=int, help="default 20 (text: 6)")
    ap.add_argument("--epochs", type=int, help="default 12 (text: 8)")
    ap.add_argument("--limit-train", type=int, help="default 4000 canvases (text: 6000 passages)")
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
    args.teacher_epochs = args.teacher_epochs or task.get("teacher_epochs", 20)
    args.epochs = args.epochs or task.get("epochs", 12)
    args.limit_train = args.limit_train or task["limit"]
    args.out = args.out or f"/work/kdkit_runs/{args.task}"
    metric, label = task["metric"], task["label"]
    out, t0 = Path(args.out), time.time()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"teacher: {_name(args.teacher)}, {args.teacher_epochs} epochs on the whole training split")
    teacher_recipe = base_recipe(args, args.teacher, args.teacher_epochs, None)
    teacher_recipe["optim"]["lr"] = task.get("teacher_lr", teacher_recipe["optim"]["lr"])
    rows_t = train_once(teacher_recipe, out / "teacher", args.write_only)
    teacher = out / "teacher" / "checkpoint.pt"
    sweep = {"base": base_recipe(args, args.student, args.epochs, args.limit_train, teacher),
             "methods": args.methods, "trials": args.trials, "sampler": "tpe", "pruner": "median", "seed": 0,
             "seeds": [int(s) for s in args.seeds.split(",")], "out": str(out / "methods"), "name": args.task,
             "method_settings": {}}
    cfg = parse_sweep(sweep, "dense_table")
    name = task["doc"]
    ledger_restore(Path(args.docs) / name, out / "methods")
    command = "python benchmarks/dense_table.py " + " ".join(a for a in sys.argv[1:] if a != "--write-only")

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
        lr = task["optim"]["lr"]
        limit = f"the first {args.limit_train}" if args.limit_train else "all the"
        text = [f"# {task['title']}, {_name(args.teacher)} -> {_name(args.student)}: each method's weights chosen "
                f"by a sweep on validation {label}", "", f"Generated by `{command}` (resumable; runs in {out}).", "",
                f"Teacher {_name(args.teacher)}, trained here from scratch: {rows_t[-1]['test/' + metric]:.2f} test "
                f"{label} ({args.teacher_epochs} epochs on the whole training split, lr "
                f"{task.get('teacher_lr', lr)}). Students: "
                f"{_name(args.student)}, {args.epochs} epochs on {limit} training {task['samples']} (a 10% validation "
                f"split carved from them by seed 0), {task['regime'].format(lr=lr)}; {args.threads} CPU threads.",
                "",
                f"Budget: {args.trials} trials per method (TPE; median pruning, never before epoch "
                f"{cfg.pruner_warmup}), the same for vanilla over the learning rate and weight decay; the ranges "
                "are in kdkit/sweep/methods.py. Final runs: the best configuration over seeds "
                f"{args.seeds} on the test {task['samples']}, mean ± std; vs vanilla: mean ± std of the per-seed "
                "differences.",
                "", f"Cost: {spent / 3600:.2f} h of training (all trials and final runs; teacher not counted) on the "
                f"2-core development machine; {PAUSES}{cpu_clause(rows)}.", "",
                f"## Ranking (by validation {label})", ""]
        shift = len(task["extra"])  # the added columns sit at 4.., right-aligned like the ranking's numbers
        numeric = {i + (i >= 4) * shift for i in RANKING_NUMERIC} | set(range(4, 4 + shift))
        text += markdown_table(head, cells, numeric).splitlines()
        text += ["", f"Not better than the student from scratch on test: {', '.join(losers) if losers else 'none'}."]
        write_table(args, name, args.task, text, rows, pending, f"benchmarks/dense_table.py --task {args.task}",
                    {"lr": task["optim"]["lr"], "weight_decay": task["optim"]["weight_decay"]}, out / "methods")
        hours = (time.time() - t0) / 3600
        say(f"wrote {Path(args.docs) / name}.md ({len(rows)} methods, {len(pending)} to go; {hours:.2f} h)")

    from kdkit.sweep.compare import read_methods, run_methods

    if args.write_only:
        write(*read_methods(cfg))
    else:
        run_methods(cfg, log=say, after=write)
        vanilla = Path(json.loads((out / "methods" / "vanilla" / "final.json").read_text())["runs"][0]["run"])
        if not (vanilla / "checkpoint.pt").is_file():  # finished on another machine: trained again from best.yaml
            from kdkit.yamlio import load_yaml

            vanilla = out / "vanilla-seed0"
            train_once(load_yaml(out / "methods" / "vanilla" / "best.yaml"), vanilla)
        networks = {f"teacher {_name(args.teacher)}": teacher,
                    f"student {_name(args.student)} (from scratch, seed 0)": vanilla / "checkpoint.pt"}
        cost = cost_rows(networks, args.threads, metric)
        doc = Path(args.docs) / f"{name}.md"
        doc.write_text(doc.read_text() + "\n## Size and speed (kdkit profile, CPU)\n\n" + markdown_table(
            ["network", "params", f"MACs per {task['sample']}", "ms, batch 1",
             "ms, batch 32", f"test {label}"], cost,
            {1, 2, 3, 4, 5}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
