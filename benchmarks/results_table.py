"""Methods x seeds results table: every registered method distils one teacher into one student.

Trains (or reuses) a teacher, then for each seed the student from scratch (``vanilla``, the baseline)
and with every other method, all with one recipe, and writes ``docs/results/<name>.md`` and ``.json``:
test top-1 mean and standard deviation per method, the difference to the baseline, and agreement with
the teacher. Methods with a preliminary stage or a warm-up get them shortened to fit short recipes
(``--stage-epochs``, ``--warmup-epochs``); every override is printed in the output.

The CPU recipe used for docs/results/fashion_mnist.md (about 25 minutes on 2 cores):

    python benchmarks/results_table.py --name fashion_mnist --dataset fashion_mnist \\
        --teacher cnn_medium --student cnn_tiny --teacher-epochs 5 --epochs 3 --limit-train 10000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kdkit import from_config, list_methods, load_config
from kdkit.methods import METHODS


def method_entry(name: str, stage_epochs: int, warmup_epochs: int) -> dict[str, Any]:
    """The method with its defaults, except for preliminary stages and warm-ups, shortened."""
    entry: dict[str, Any] = {"name": name}
    fields = METHODS.get(name).Config.__dataclass_fields__
    if "stage1_epochs" in fields and METHODS.get(name)().pretrain_epochs > 0:
        entry["stage1_epochs"] = stage_epochs
    if "warmup_epochs" in fields:
        entry["warmup_epochs"] = warmup_epochs
    return entry


def run_config(args: argparse.Namespace, out: Path, run: str, model: str, seed: int, epochs: int,
               method: dict[str, Any] | None = None, teacher: str | None = None):
    base: dict[str, Any] = {
        "model": model, "method": method or "vanilla",
        "data": {"name": args.dataset, "batch_size": args.batch_size, "limit_train": args.limit_train},
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "seed": seed, "progress": False, "out_dir": str(out), "run_name": run},
    }
    if teacher:
        base["teacher"] = {"name": args.teacher, "checkpoint": teacher}
    return load_config(base=base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="output name: docs/results/NAME.md and .json")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--teacher", default="cnn_medium")
    ap.add_argument("--student", default="cnn_tiny")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=None, help="train the students on the first N images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stage-epochs", type=int, default=1)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--methods", default="*", help="glob of method names")
    ap.add_argument("--out", default="runs/results")
    ap.add_argument("--docs", default="docs/results")
    args = ap.parse_args()
    out = Path(args.out) / args.name
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    quiet = lambda *_: None  # noqa: E731

    t_ckpt = out / "teacher" / "checkpoint.pt"
    if not t_ckpt.exists():
        say(f"training teacher {args.teacher} for {args.teacher_epochs} epochs on the full training set")
        cfg = run_config(args, out, "teacher", args.teacher, 0, args.teacher_epochs)
        cfg.data.limit_train = None
        from_config(cfg, log=quiet).fit()
    teacher_top1 = json.loads((out / "teacher" / "metrics.jsonl").read_text().splitlines()[-1])["test/top1"]

    methods = ["vanilla"] + [m for m in list_methods(args.methods)  # online methods: schemes_table.py
                             if m != "vanilla" and METHODS.get(m).family != "online"]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    overrides = {}
    reused = 0
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for m in methods:
            entry = method_entry(m, args.stage_epochs, args.warmup_epochs)
            if len(entry) > 1:
                overrides[m] = {k: v for k, v in entry.items() if k != "name"}
            needs_teacher = METHODS.get(m).needs_teacher
            cfg = run_config(args, out, f"seed{seed}-{m}", args.student, seed, args.epochs, entry,
                             str(t_ckpt) if needs_teacher else None)
            run_dir = out / f"seed{seed}-{m}"
            if (run_dir / "checkpoint.pt").exists():  # finished earlier: reuse (rerun with a fresh --out)
                reused += 1
            else:
                from_config(cfg, log=quiet).fit()
            lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            r = {k: v for k, v in lines[-1].items() if k.startswith("test/")}
            r["time_s"] = sum(line.get("time/train_s", 0.0) for line in lines)  # training time, all epochs
            results[m].append(r)
            say(f"seed {seed} {m:10s} test top1 {r['test/top1']:6.2f}%")
    write(args, results, overrides, teacher_top1, time.perf_counter() - t0, reused)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write(args: argparse.Namespace, results: dict[str, list[dict[str, float]]], overrides: dict[str, Any],
          teacher_top1: float, total_s: float, reused: int) -> None:
    base_mean, _ = _mean_std([r["test/top1"] for r in results["vanilla"]])
    rows = []
    for m, runs in results.items():
        mean, std = _mean_std([r["test/top1"] for r in runs])
        agree = [r["test/agreement"] for r in runs if "test/agreement" in r]
        times = [r["time_s"] for r in runs]
        rows.append({"method": m, "family": METHODS.get(m).family, "top1_mean": mean, "top1_std": std,
                     "delta": mean - base_mean, "agreement": statistics.mean(agree) if agree else None,
                     "time_s": statistics.mean(times) if times else None, "runs": runs})
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k not in ("out", "docs")}
    (docs / f"{args.name}.json").write_text(json.dumps(
        {"config": meta, "teacher_top1": teacher_top1, "overrides": overrides, "rows": rows}, indent=1))
    lines = [
        f"# {args.dataset}: {args.teacher} -> {args.student}", "",
        f"Generated by `python benchmarks/results_table.py {' '.join(sys.argv[1:])}` "
        f"(this invocation: {total_s / 60:.0f} min; {reused} of the runs were reused from earlier invocations "
        "into the same --out). Training seconds per run are read from each run's metrics.jsonl and depend "
        "on what else the machine was doing.", "",
        f"Teacher {args.teacher}: {teacher_top1:.2f}% test top-1 ({args.teacher_epochs} epochs, full training set). "
        f"Students: {args.epochs} epochs on the first {args.limit_train or 'all'} training images, batch "
        f"{args.batch_size}, SGD lr {args.lr} cosine, {args.seeds} seeds (0..{args.seeds - 1}); test top-1 on the "
        "full test set, mean ± standard deviation over seeds. Every method runs with its defaults except:", "",
    ]
    lines += [f"- `{m}`: " + ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in sorted(overrides.items())]
    lines += ["", "| method | family | test top-1 (%) | vs vanilla | agreement with teacher (%) | train s per run |",
              "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["top1_mean"]):
        agree = f"{r['agreement']:.2f}" if r["agreement"] is not None else "-"
        t = f"{r['time_s']:.0f}" if r["time_s"] is not None else "-"
        lines.append(f"| {r['method']} | {r['family']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | "
                     f"{r['delta']:+.2f} | {agree} | {t} |")
    (docs / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
