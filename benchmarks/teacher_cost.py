"""What the teacher costs a distillation run, and what the two ways of computing its outputs once save:
the teacher cache (train.teacher_cache with replayed views, kdkit/engine/cache.py) and the teachers'
outputs kept between evaluations (TeacherOutputs, kdkit/engine/evaluate.py). The regime of the offline
sweep table (benchmarks/sweep_tables.py): cnn_medium -> cnn_tiny, the first 10,000 Fashion-MNIST training
images, a 10% validation split, batch 128, 1 thread.

    python benchmarks/teacher_cost.py --out /tmp/teacher_cost   # JSON to --json

Three runs of ``--method`` over ``--epochs`` epochs, each timed whole (wall seconds, from building to the
test evaluation): the teacher run at every step and at every evaluation (kdkit before the kept outputs);
the teacher run at every step, its validation outputs kept; the teacher cache filled before training and
the validation outputs kept (the sweep table's regime). The teacher's weights do not change its cost: a
cnn_medium trained for one epoch on 2,000 images stands in for it unless ``--teacher`` names a checkpoint.
Timings on a shared machine are noisy: compare the ratios of one invocation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kdkit.build import from_config, trainer_in
from kdkit.config import load_config

DATA = {"name": "fashion_mnist", "batch_size": 128, "val_fraction": 0.1}


def recipe(args: argparse.Namespace, teacher: str, cache: bool, out: Path, name: str) -> dict:
    train = {"epochs": args.epochs, "seed": 0, "progress": False, "threads": args.threads, "out_dir": str(out),
             "run_name": name, "existing": "overwrite"}
    if cache:
        train["teacher_cache"] = {"store": "memory"}
    return {"model": "cnn_tiny", "teacher": {"name": "cnn_medium", "checkpoint": teacher},
            "method": [{"name": args.method}],
            "data": {**DATA, "limit_train": args.limit_train, "replay_views": args.replay_views},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"}, "train": train}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="kd")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--replay-views", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher", default=None, help="a cnn_medium checkpoint (default: trained here, briefly)")
    ap.add_argument("--out", default="/tmp/kdkit_teacher_cost")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    out = Path(args.out)
    teacher = args.teacher
    if teacher is None:
        stand_in = {"model": "cnn_medium", "data": {**DATA, "limit_train": 2000},
                    "train": {"epochs": 1, "progress": False, "threads": args.threads}}
        trainer_in(out / "teacher", stand_in, log=lambda m: None).fit()
        teacher = str(out / "teacher" / "checkpoint.pt")
    rows = []
    for label, cache, keep in (("teacher live, evaluated every epoch", False, False),
                               ("teacher live, validation outputs kept", False, True),
                               ("teacher cache, validation outputs kept", True, True)):
        name = label.replace(" ", "_").replace(",", "")
        logs: list[str] = []
        t0 = time.perf_counter()
        trainer = from_config(load_config(base=recipe(args, teacher, cache, out, name)), log=logs.append)
        trainer.teacher_eval.keep = keep
        trainer.fit()
        wall = time.perf_counter() - t0
        train_s = sum(h.get("time/train_s", 0.0) for h in trainer.history)
        fill = next((float(m.rsplit("filled in ", 1)[1].rstrip("s")) for m in logs if "filled in" in m), 0.0)
        mib = next((float(m.split(", ")[1].split(" MiB")[0]) for m in logs if "teacher cache:" in m), 0.0)
        rows.append({"run": label, "wall_s": round(wall, 1), "train_s": round(train_s, 1), "cache_fill_s": fill,
                     "cache_mib": mib, "rest_s": round(wall - train_s - fill, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["wall_vs_first"] = round(r["wall_s"] / base, 3)
    result = {"args": vars(args), "rows": rows}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
