"""Balance hints on digits: each recipe's gradient shares on the student over its first 10 steps, as
kdkit logs them (README, "Balance hints"). A cnn_small teacher is trained for 2 epochs on digits, then a
cnn_tiny student for one epoch per recipe; about a minute on a laptop CPU.

    python benchmarks/balance_hints.py [--out /tmp/kdkit_balance]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from kdkit import from_config, load_config

RECIPES = {
    "kd": "kd",
    "kd + fitnets (beta 100)": ["kd", "fitnets"],
    "kd + at (beta 1000)": ["kd", "at"],
    "dist": "dist",
    "dkd": "dkd",
    "rkd": "rkd",
    "crd": "crd",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/kdkit_balance", help="where the runs go (replaced)")
    args = ap.parse_args()
    train = {"progress": False, "out_dir": args.out, "existing": "overwrite"}
    teacher = load_config(base={"model": "cnn_small", "data": {"name": "digits"},
                                "train": {**train, "epochs": 2, "run_name": "teacher"}})
    from_config(teacher, log=lambda m: None).fit()
    ckpt = str(Path(args.out) / "teacher" / "checkpoint.pt")
    print("| recipe | shares (first 10 steps) | largest / second | warned |\n|---|---|---:|---|")
    for k, (label, method) in enumerate(RECIPES.items()):
        cfg = load_config(base={"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
                                "teacher": {"name": "cnn_small", "checkpoint": ckpt}, "method": method,
                                "train": {**train, "epochs": 1, "run_name": f"r{k}"}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from_config(cfg, log=lambda m: None).fit()
        row = json.loads((Path(args.out) / f"r{k}" / "metrics.jsonl").read_text().splitlines()[0])
        shares = {n[11:]: v for n, v in row.items() if n.startswith("grad_share/") and n != "grad_share/dominance"}
        warned = any("gradient on the student" in str(w.message) for w in caught)
        print(f"| {label} | " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(shares.items(), key=lambda kv: -kv[1]))
              + f" | {row['grad_share/dominance']:.1f} | {'yes' if warned else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
