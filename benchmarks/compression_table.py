"""Compression on Fashion-MNIST, every step kdkit has, from one command: the teacher (cnn_medium); the same
network pruned to half its MACs (Torch-Pruning, L2 importance) with no recovery, recovered by fine-tuning
on the labels and by KD from the unpruned network; factorized (SVD / Tucker-2, 90% energy) with no
recovery and recovered by KD; trained quantization-aware with KD from the fp32 network; static int8
(ONNX Runtime QDQ) of the teacher, of the QAT network and of the KD-recovered pruned network; and the
tiny student (cnn_tiny) trained plainly, with KD, with NetAug, and with NetAug + KD. Accuracy (mean and
std over seeds for every trained row), parameters, MACs, weight size, and CPU latency in PyTorch eager and
ONNX Runtime, all measured in one run of this script (so the speed ratios compare like with like), and
the accuracy-vs-latency plot.

    kdkit train configs/fashion_mnist/teacher.yaml          # the network to compress (if not there yet)
    python benchmarks/compression_table.py                   # trains the runs that are missing (3 seeds)
    python benchmarks/compression_table.py --train-only      # only that (e.g. in the background)

Writes docs/results/fashion_mnist_compression.{md,json,png}. Seed k > 0 of a recipe runs as
``<run_name>-seed<k>`` with ``train.seed=k``; seed 0 is the recipe as it stands.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from kdkit import from_config, load_config
from kdkit.engine.evaluate import evaluate
from kdkit.export import checkpoint_network
from kdkit.lowrank import LowRank
from kdkit.measure import accuracy_latency_plot, measure_network
from kdkit.pipeline import final_metrics
from kdkit.prune import structured_prune
from kdkit.quantize import Calibration, onnx_accuracy

C = "configs/fashion_mnist"
RECIPES = {"pruned + fine-tuning": f"{C}/compress/prune50_ft.yaml",
           "pruned + KD from the unpruned": f"{C}/compress/prune50_kd.yaml",
           "low-rank + KD from the unfactorized": f"{C}/compress/lowrank90_kd.yaml",
           "QAT + KD from fp32 (its fp32 weights)": f"{C}/compress/qat_kd.yaml",
           "student (cnn_tiny), labels only": f"{C}/scratch.yaml",
           "student, KD from the teacher": f"{C}/kd.yaml",
           "student, NetAug": f"{C}/netaug_plain.yaml",
           "student, NetAug + KD": f"{C}/netaug.yaml"}
INT8 = {"teacher, int8 (ONNX Runtime)": None,  # the teacher itself
        "QAT + KD, int8 (ONNX Runtime)": "QAT + KD from fp32 (its fp32 weights)",
        "pruned + KD, int8 (ONNX Runtime)": "pruned + KD from the unpruned"}


def seeded(recipe: str, seed: int):
    cfg = load_config(recipe)
    if seed:
        cfg = load_config(recipe, overrides=[f"train.seed={seed}", f"train.run_name={cfg.train.run_name}-seed{seed}"])
    return cfg, Path(cfg.train.out_dir) / cfg.train.run_name


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def train_missing(seeds: int) -> None:
    for seed in range(seeds):
        for recipe in RECIPES.values():
            cfg, run_dir = seeded(recipe, seed)
            if final_metrics(run_dir) is not None:
                continue
            if (run_dir / "checkpoint.pt").is_file():
                from kdkit import resume

                print(f"resuming {recipe} (seed {seed}) in {run_dir}", file=sys.stderr)
                resume(run_dir, log=_log).fit()
            else:
                print(f"training {recipe} (seed {seed}) in {run_dir}", file=sys.stderr)
                from_config(cfg, run_dir=run_dir, log=_log).fit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/fashion_mnist-teacher/checkpoint.pt")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="fashion_mnist_compression")
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--train-only", action="store_true")
    args = ap.parse_args()
    batches = args.batch or [1, 256]
    torch.set_num_threads(args.threads)
    if not Path(args.teacher).is_file():
        print(f"{args.teacher} is missing: kdkit train configs/fashion_mnist/teacher.yaml", file=sys.stderr)
        return 2
    train_missing(args.seeds)
    if args.train_only:
        return 0
    load = os.getloadavg()[0]
    teacher, _, loaders = checkpoint_network(args.teacher)
    shape = tuple(loaders.input_shape)
    ds = loaders.dataset
    rows: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure_network(teacher, shape, batches, args.runs, work, "warm")  # the process's first timings run slow
        rows["teacher (cnn_medium)"] = {"top1": [evaluate(teacher, loaders.test)["top1"]],
                                        **measure_network(teacher, shape, batches, args.runs, work, "t")}
        pruned = copy.deepcopy(teacher)
        stats = structured_prune(pruned, shape, 0.5, importance="l2")
        rows["pruned, no recovery"] = {"top1": [evaluate(pruned, loaders.test)["top1"]],
                                       **measure_network(pruned, shape, batches, args.runs, work, "p")}
        factorized = LowRank(energy=0.9).apply(copy.deepcopy(teacher))
        rows["low-rank (energy 0.9), no recovery"] = {
            "top1": [evaluate(factorized, loaders.test)["top1"]],
            **measure_network(factorized, shape, batches, args.runs, work, "l")}
        for name, recipe in RECIPES.items():
            accs = []
            for seed in range(args.seeds):
                _, run_dir = seeded(recipe, seed)
                model, _, _ = checkpoint_network(run_dir / "checkpoint.pt")
                accs.append(evaluate(model, loaders.test)["top1"])
                if seed == 0:
                    models[name] = model
            row = measure_network(models[name], shape, batches, args.runs, work, f"r{len(rows)}")
            rows[name] = {"top1": accs, **row}
        for name, source in INT8.items():
            accs = []
            for seed in range(1 if source is None else args.seeds):
                if source is None:
                    model = teacher
                elif seed == 0:  # loaded already for its fp32 row
                    model = models[source]
                else:
                    model = checkpoint_network(seeded(RECIPES[source], seed)[1] / "checkpoint.pt")[0]
                reader = Calibration(loaders.train.data, ds.mean, ds.std, args.calibration)
                runs = args.runs if seed == 0 else 1  # other seeds: their accuracy only
                row = measure_network(model, shape, batches, runs, work, f"q{len(rows)}-{seed}", int8=reader)
                accs.append(onnx_accuracy(Path(row["onnx_file"]), loaders.test)["top1"])
                if seed == 0:
                    rows[name] = row
            rows[name]["top1"] = accs
        for r in rows.values():
            r.pop("onnx_file")
            r["top1_mean"] = statistics.mean(r["top1"])
            r["top1_std"] = statistics.stdev(r["top1"]) if len(r["top1"]) > 1 else 0.0
    base = rows["teacher (cnn_medium)"]
    head = ["model", "test top1 (seeds)", "params", "MACs", "weights KiB"] + [
        f"{k} b{b} ms (x faster)" for b in batches for k in ("eager", "ORT")]
    lines = [f"# Compression on Fashion-MNIST ({args.threads} threads)", "",
             "Command: `python benchmarks/compression_table.py` (after `kdkit train "
             "configs/fashion_mnist/teacher.yaml`). "
             f"Test top-1: mean ± std over {args.seeds} seeds for every trained row (recipe seeds 0..{args.seeds - 1}; "
             "the teacher and the no-recovery rows are one network). Every other column is measured on seed 0. "
             f"Pruning removed {100 * (1 - stats['macs_after'] / stats['macs_before']):.1f}% of the MACs "
             "(Torch-Pruning's count); low-rank: SVD / Tucker-2 keeping 90% of each mode's energy; recoveries: "
             "3 epochs, `configs/fashion_mnist/compress/{prune50_ft,prune50_kd,lowrank90_kd}.yaml`; "
             "QAT: 2 epochs with int8 fake quantization and KD from the fp32 teacher (`compress/qat_kd.yaml`). "
             f"int8: static QDQ, per-channel weights, calibrated on {args.calibration} training images; its weights "
             "column is the int8 ONNX file, and PyTorch eager runs no int8 (-). "
             "Students: cnn_tiny, 5 epochs, `configs/fashion_mnist/{scratch,kd,netaug_plain,netaug}.yaml` (NetAug: "
             "widths x1.5-3 drawn per step, deployed alone, so it costs what the plain student costs). "
             f"Latency: median of {args.runs} calls after 10 warm-up calls (and one discarded measurement of the "
             "teacher first), measured in this one run; x faster is against the teacher. "
             f"Load average when it began: {load:.2f} on {os.cpu_count()} CPUs.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        acc = f"{r['top1_mean']:.2f}" + (f" ± {r['top1_std']:.2f} ({len(r['top1'])})" if len(r["top1"]) > 1 else "")
        cells = [name, acc, f"{r['params']:,}", f"{r['macs']:,}", f"{r['weights_kib']:.0f}"]
        for b in batches:
            for k in ("eager", "ort"):
                v = r[f"{k}_b{b}_ms"]
                cells.append(f"{v:.3f} ({base[f'{k}_b{b}_ms'] / v:.2f})" if v == v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    b = max(batches)
    lines += ["", f"![test top-1 against ONNX Runtime latency at batch {b}]({args.name}.png)", ""]
    Path("docs/results").mkdir(parents=True, exist_ok=True)
    accuracy_latency_plot([{"label": n, "latency_ms": r[f"ort_b{b}_ms"], "top1": r["top1_mean"],
                            "top1_std": r["top1_std"]} for n, r in rows.items()],
                          f"docs/results/{args.name}.png", f"ONNX Runtime latency, batch {b}, {args.threads} threads "
                          "(ms)", f"Fashion-MNIST: compression steps (mean ± std over {args.seeds} seeds)")
    Path(f"docs/results/{args.name}.md").write_text("\n".join(lines) + "\n")
    Path(f"docs/results/{args.name}.json").write_text(json.dumps({"args": vars(args), "prune": stats, "rows": rows},
                                                                 indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
