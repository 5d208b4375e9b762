"""Which regime should `make demo` show? Candidates on the embedded digits, each measured over seeds:
the student (cnn_tiny) from scratch against the same student with KD (T=4, alpha=0.9) from a cnn_medium
teacher trained on the full training set, with the student's own training data limited to the first N
images, batch 32 (a label-scarce transfer set, as in Hinton et al. 2015, sec. 3: soft targets carry much of what
the labels cannot) and a schedule long enough for the small set.

    python benchmarks/demo_candidates.py            # about 5 minutes on a 2-core CPU

Writes docs/results/demo_candidates.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kdkit import from_config, load_config

CANDIDATES = [  # (student training images, student epochs); None: the whole training split
    (None, 15), (400, 30), (200, 40), (100, 60), (50, 80)]


def config(kind: str, seed: int, limit: int | None, epochs: int, out: Path, teacher: str | None = None):
    model = "cnn_medium" if kind == "teacher" else "cnn_tiny"
    method = {"name": "kd", "temperature": 4.0, "alpha": 0.9} if kind == "kd" else "vanilla"
    base = {"model": model, "method": method,
            "data": {"name": "digits", "batch_size": 64 if kind == "teacher" or limit is None else 32,
                     "limit_train": None if kind == "teacher" else limit},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, "schedule": {"name": "cosine"},
            "train": {"epochs": epochs, "seed": seed, "device": "cpu", "progress": False, "out_dir": str(out),
                      "run_name": f"{kind}-{limit}-{seed}"}}
    if teacher:
        base["teacher"] = {"name": "cnn_medium", "checkpoint": teacher}
    return load_config(base=base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        teachers = {}
        for seed in range(args.seeds):
            t = from_config(config("teacher", seed, None, 15, out), log=lambda m: None)
            r = t.fit()
            teachers[seed] = (str(t.run_dir / "checkpoint.pt"), r["test/top1"])
        for limit, epochs in CANDIDATES:
            res = {"scratch": [], "kd": [], "time": []}
            for seed in range(args.seeds):
                for kind in ("scratch", "kd"):
                    t0 = time.perf_counter()
                    r = from_config(config(kind, seed, limit, epochs, out, teachers[seed][0] if kind == "kd" else None),
                                    log=lambda m: None).fit()
                    res[kind].append(r["test/top1"])
                    res["time"].append(time.perf_counter() - t0)
            gain = [k - s for k, s in zip(res["kd"], res["scratch"])]
            row = {"limit_train": limit, "epochs": epochs, "scratch": res["scratch"], "kd": res["kd"],
                   "gain_mean": statistics.mean(gain), "gain_std": statistics.stdev(gain) if len(gain) > 1 else 0.0,
                   "time_per_run_s": statistics.mean(res["time"])}
            rows.append(row)
            print(f"limit {limit} epochs {epochs}: scratch {statistics.mean(res['scratch']):.2f} kd "
                  f"{statistics.mean(res['kd']):.2f} gain {row['gain_mean']:+.2f} ± {row['gain_std']:.2f} "
                  f"({row['time_per_run_s']:.1f}s/run)", file=sys.stderr)
    t_acc = [a for _, a in teachers.values()]

    def ms(v):
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    lines = ["# Demo candidates: where does KD help the digits student?", "",
             f"Command: `python benchmarks/demo_candidates.py` ({args.seeds} seeds). Teacher: cnn_medium, full "
             f"training split, 15 epochs: test top-1 {ms(t_acc)}. Student: cnn_tiny on the first N training "
             "images, batch 32 (64 on the whole split; the last partial batch of each epoch is dropped), the "
             "teacher's soft targets on the same N images for KD, T=4, alpha=0.9. Test top-1 on the "
             "full test split, mean ± std over seeds; gain = KD - scratch per seed.", "",
             "| student images | epochs | scratch | KD | gain (per seed) | time per run (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['limit_train'] or 'all (1,294)'} | {r['epochs']} | {ms(r['scratch'])} | {ms(r['kd'])} | "
                     f"{r['gain_mean']:+.2f} ± {r['gain_std']:.2f} | {r['time_per_run_s']:.1f} |")
    Path("docs/results/demo_candidates.md").write_text("\n".join(lines) + "\n")
    Path("docs/results/demo_candidates.json").write_text(json.dumps({"teacher": t_acc, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
