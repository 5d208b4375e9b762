"""Multi-stage schemes x seeds, as kdkit pipelines: born-again generations (Furlanello et al. 2018) and a
teacher assistant (Mirzadeh et al. 2020), on the recipe of benchmarks/schemes_table.py; test top-1 of the
last epoch, mean +- std over seeds. Appends its section to ``docs/results/<name>.md`` (the online schemes'
table stays as schemes_table.py wrote it) and writes ``docs/results/<name>_stages.json``.

- born-again: generation 0 is the model trained alone; generations 1..3 are fresh networks of the same
  architecture, each taught by the one before (KD), generation k with seed s + k - 1; the ensemble is the
  mean logits of generations 1..3 (the pipeline's own ensemble row);
- teacher assistant: a ``cnn_large`` teacher, a ``cnn_small`` assistant taught by it, the ``cnn_tiny``
  student taught by the assistant, and the same student taught by the teacher directly.

Resumable: the runs live in ``--out`` (default ``/work/kdkit_runs/schemes/<name>``, outside the work
tree); a finished run is skipped, a killed one resumed (kdkit's pipeline does both). The CPU recipe:

    python benchmarks/schemes_stages.py --name fashion_mnist_schemes --epochs 3 --limit-train 10000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml
from schemes_table import add_recipe_args, base_recipe, command  # the same recipe and flags

from kdkit.engine.run_files import read_rows
from kdkit.pipeline import run_pipeline

ROWS = [("born-again", "generation 0 (trained alone)", "teacher"), ("born-again", "generation 1", "born_again.1"),
        ("born-again", "generation 2", "born_again.2"), ("born-again", "generation 3", "born_again.3"),
        ("born-again", "ensemble of generations 1-3", "born_again (ensemble of 3)"),
        ("teacher assistant", "teacher (cnn_large)", "big"),
        ("teacher assistant", "assistant (cnn_small)", "assistant"),
        ("teacher assistant", "student taught by the teacher", "student_direct"),
        ("teacher assistant", "student taught by the assistant", "student_via_ta")]


def pipeline(args, seed: int, out: Path) -> dict:
    base = base_recipe(args, seed)
    kd = {**base, "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9}}
    return {"out_dir": str(out), "runs": [
        {"name": "teacher", "config": base},
        {"name": "born_again", "config": kd, "teacher": {"from": "teacher"}, "repeat": 3},
        {"name": "big", "config": base, "set": ["model.name=cnn_large"]},
        {"name": "assistant", "config": kd, "set": ["model.name=cnn_small"], "teacher": {"from": "big"}},
        {"name": "student_via_ta", "config": kd, "teacher": {"from": "assistant"}},
        {"name": "student_direct", "config": kd, "teacher": {"from": "big"}},
    ]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_args(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or f"/work/kdkit_runs/schemes/{args.name}")
    top1: dict[str, list[float]] = {key: [] for *_, key in ROWS}
    train_s: dict[str, list[float]] = {key: [] for *_, key in ROWS}  # from the runs' own logs: resumes count once
    for seed in range(args.seeds):
        folder = out / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "pipeline.yaml"
        path.write_text(yaml.safe_dump(pipeline(args, seed, folder)))
        summary = run_pipeline(path, log=lambda m: print(m, file=sys.stderr))
        got = {row["run"]: row for row in summary}
        for key in top1:
            top1[key].append(got[key]["test/top1"])
            if got[key]["status"] != "ensemble":
                rows = read_rows(Path(got[key]["dir"]))
                train_s[key].append(sum(r.get("time/train_s", 0.0) for r in rows if "epoch" in r))

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"

    alone = statistics.mean(top1["teacher"])
    lines = ["## Multi-stage schemes: born-again generations and a teacher assistant", "",
             f"Command: {command('schemes_stages.py', args)} (kdkit pipelines; KD with T=4, alpha=0.9, on the recipe "
             "above). Test top-1 (%) at the last epoch, mean ± std over seeds.", "",
             f"| scheme | network | test top-1 | vs {args.model} alone | training s |", "|---|---|---:|---:|---:|"]
    for scheme, label, key in ROWS:
        cost = f"{statistics.mean(train_s[key]):.0f}" if train_s[key] else "-"
        lines.append(f"| {scheme} | {label} | {ms(top1[key])} | {statistics.mean(top1[key]) - alone:+.2f} | {cost} |")
    lines += ["", f"Generation k trains with seed s + k - 1 (its own initialisation and data order). The vs column "
              f"is against generation 0, the {args.model} trained alone with the same seed. Training s: the "
              "training epochs' seconds of one run, summed from its metrics.jsonl (mean over seeds; evaluation "
              "not included), on the machine as it was during the run; all nine networks of a seed: "
              f"{statistics.mean(sum(v[i] for v in train_s.values() if v) for i in range(args.seeds)):.0f} s. "
              f"Runs in {out}."]
    md = Path(f"docs/results/{args.name}.md")
    text = md.read_text() if md.exists() else ""
    text = re.split(r"\n## Multi-stage schemes", text)[0].rstrip("\n")
    md.write_text(text + "\n\n" + "\n".join(lines) + "\n")
    Path(f"docs/results/{args.name}_stages.json").write_text(
        json.dumps({"args": vars(args), "top1": top1, "train_s": train_s}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
