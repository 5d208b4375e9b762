"""Training schemes x seeds: each online scheme against independently trained networks of the same
architecture, one recipe, test top-1 of the last epoch (mean +- std over seeds), with ensemble rows.

- ``independent``: two networks trained alone (seeds s and s + 1000); "per network" is their mean,
  "ensemble" the accuracy of their mean logits;
- ``dml``: the student and one peer trained together; likewise per network and ensemble;
- ``one``: a 3-branch gated network; per network = each branch (trunk + branch) on its own, ensemble =
  the gated output;
- ``cl``: a 2x2 tree of heads with gradient rescaling; per network = each head, ensemble = their mean;
- ``dcm``: the student and one peer with auxiliary classifiers; like dml.
- ``kdcl``: the student and one peer, each on its own augmented view, MinLogit teacher; like dml.
- ``okddip``: 4 branches (3 peers and the leader); per network = each branch, ensemble = their mean,
  deployed = the leader.

Writes ``docs/results/<name>.md`` and ``.json``. The CPU recipe of docs/results/fashion_mnist_schemes.md:

    python benchmarks/schemes_table.py --name fashion_mnist_schemes --epochs 3 --limit-train 10000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from torch import nn

from kdkit import from_config, load_config
from kdkit.engine.evaluate import MeanLogits, evaluate
from kdkit.methods import METHODS
from kdkit.sweep.methods import fill_model

SCHEMES = {
    "dml": {"peers": ["{model}"], "method": "dml"},
    "one": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": 3, "gate": True}]},
            "method": {"name": "one", "rampup_epochs": 1}},
    "cl": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": [2, 2], "rescale": True}]},
           "method": "cl"},
    "dcm": {"peers": ["{model}"], "method": "dcm"},
    "kdcl": {"peers": ["{model}"], "method": "kdcl", "data": {"views": 2}},
    "okddip": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": 4}]},
               "method": {"name": "okddip", "rampup_epochs": 1}},
}
COHORTS = ("dml", "dcm", "kdcl")  # separate networks; the others are branched


def add_recipe_args(ap: argparse.ArgumentParser) -> None:
    """The recipe's flags, shared with benchmarks/schemes_stages.py."""
    ap.add_argument("--name", required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="cnn_tiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=3)


def base_recipe(args, seed: int) -> dict:
    """One network trained with labels only on the table's recipe (the schemes add their parts)."""
    return {"model": args.model,
            "data": {"name": args.dataset, "batch_size": args.batch_size, "limit_train": args.limit_train},
            "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"}, "train": {"epochs": args.epochs, "seed": seed, "progress": False}}


def command(script: str, args) -> str:
    return (f"`python benchmarks/{script} --name {args.name} --dataset {args.dataset} --model {args.model} --epochs "
            f"{args.epochs}{f' --limit-train {args.limit_train}' if args.limit_train else ''} --seeds {args.seeds}`")


def run(args, out: Path, name: str, seed: int, scheme: dict) -> tuple[dict, object, float]:
    base = base_recipe(args, seed)
    base.update({"method": "vanilla", "train": {**base["train"], "out_dir": str(out), "run_name": name}})
    scheme = fill_model(scheme, args.model)
    base.update({**scheme, "data": {**base["data"], **scheme.get("data", {})}})
    t0 = time.perf_counter()
    trainer = from_config(load_config(base=base), log=lambda m: None)
    result = trainer.fit()
    return result, trainer, time.perf_counter() - t0


def ensemble_top1(trainers_nets: list[nn.Module], trainer) -> float:
    return evaluate(MeanLogits(trainers_nets), trainer.loaders.test, task=trainer.task)["top1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_args(ap)
    ap.add_argument("--out", default=None, help="scratch directory of the runs (default runs/schemes/<name>; "
                    "emptied first)")
    args = ap.parse_args()
    out = Path(args.out or f"runs/schemes/{args.name}")
    if out.exists():
        print(f"removing the previous runs in {out}", file=sys.stderr)
        shutil.rmtree(out)
    rows: dict[str, dict[str, list[float]]] = {s: {"net": [], "best": [], "ens": [], "deployed": [], "time": []}
                                               for s in ["independent", *SCHEMES]}
    for seed in range(args.seeds):
        a, ta, sa = run(args, out, f"independent-{seed}-a", seed, {})
        b, tb, sb = run(args, out, f"independent-{seed}-b", seed + 1000, {})
        r = rows["independent"]
        r["net"].append((a["test/top1"] + b["test/top1"]) / 2)
        r["best"].append(max(a["test/top1"], b["test/top1"]))
        r["ens"].append(ensemble_top1([ta.distiller.student, tb.distiller.student], ta))
        r["deployed"].append(r["net"][-1])  # a network trained alone: the two networks' mean
        r["time"].append(sa + sb)
        for name, scheme in SCHEMES.items():
            res, trainer, secs = run(args, out, f"{name}-{seed}", seed, scheme)
            singles = ([res["test/top1"], res["test/peer1/top1"]] if name in COHORTS else
                       [v for k, v in res.items() if k.startswith("test/branch") and k.endswith("/top1")])
            r = rows[name]
            r["net"].append(sum(singles) / len(singles))
            r["best"].append(max(singles))
            r["ens"].append(ensemble_top1(list(trainer.distiller.networks(trainable_only=True).values()), trainer)
                            if name in COHORTS else res["test/top1"])
            deployed = res["deployed"]
            r["deployed"].append(res["test/top1"] if deployed == "student" else res[f"test/{deployed}/top1"])
            r["time"].append(secs)
            print(f"seed {seed} {name}: per network {r['net'][-1]:.2f}, ensemble {r['ens'][-1]:.2f}", file=sys.stderr)

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"

    base = statistics.mean(rows["independent"]["deployed"])
    lines = [f"# Training schemes on {args.dataset} ({args.model}, {args.epochs} epochs, {args.seeds} seeds)", "",
             f"Command: {command('schemes_table.py', args)}. Test top-1 (%) at the last epoch, mean ± std over "
             "seeds.", "",
             "| scheme | family | per network | best network | ensemble | deployed network | deployed vs independent "
             "| s per run |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        family = METHODS.get(name).family if name in METHODS.names() else "baseline"
        lines.append(f"| {name} | {family} | {ms(r['net'])} | {ms(r['best'])} | {ms(r['ens'])} | {ms(r['deployed'])} | "
                     f"{statistics.mean(r['deployed']) - base:+.2f} | {statistics.mean(r['time']):.0f} |")
    lines += ["", "Per network: independent, dml, dcm and kdcl - each of the two networks; one, cl and okddip - each "
              "branch/head (trunk + branch) run alone. Ensemble: independent, dml, dcm and kdcl - the two networks' "
              "mean logits; one - the gated output; cl - the mean of the four heads; okddip - the mean of its four "
              "branches. Deployed network: the one the scheme deploys (the student; one branch for one and cl; the "
              "leader for okddip); for independent, the mean of its two networks, which the difference column is "
              "taken against. The independent ensemble is of two separately "
              "trained networks (seeds s and s + 1000). s per run: wall-clock seconds of one seed's run (for "
              "independent, both networks), on the machine as it was during the run; compare within a table only."]
    Path("docs/results").mkdir(parents=True, exist_ok=True)
    md = Path(f"docs/results/{args.name}.md")
    later = re.split(r"(?=\n## )", md.read_text(), maxsplit=1)[1:] if md.exists() else []  # e.g. the stages rows
    md.write_text("\n".join(lines) + "\n" + "".join(later))
    Path(f"docs/results/{args.name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
