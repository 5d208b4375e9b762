"""Compression on Fashion-MNIST, the steps built so far: the teacher (cnn_medium); the same network
pruned to half its MACs (Torch-Pruning, L2 importance) with no recovery, recovered by fine-tuning on the
labels, and recovered by KD from the unpruned network; factorized (SVD / Tucker-2, 90% energy) with no
recovery and recovered by KD; trained quantization-aware with KD from the fp32 network; and static int8
(ONNX Runtime QDQ) of the teacher, of the QAT network and of the KD-recovered pruned network. Accuracy,
parameters, MACs, weight size, and CPU latency in PyTorch eager and ONNX Runtime, all measured in one run
of this script (so the speed ratios compare like with like).

    kdkit train configs/fashion_mnist/teacher.yaml          # the network to compress (if not there yet)
    python benchmarks/compression_table.py                   # trains the recovery runs that are missing

Writes docs/results/fashion_mnist_compression.md and .json. One seed: recovery runs are one training
each. Not in it yet (issue 14 continues): unstructured pruning (its dense
latency is the unpruned one), NetAug, 3 seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from kdkit import from_config, load_config
from kdkit.engine.evaluate import evaluate
from kdkit.export import checkpoint_network, count_macs, export_onnx, export_safetensors, latency, onnx_session
from kdkit.lowrank import LowRank
from kdkit.pipeline import final_metrics
from kdkit.prune import structured_prune
from kdkit.quantize import _Calibration, onnx_accuracy, quantize_onnx

RECIPES = {"pruned + fine-tuning": "configs/fashion_mnist/compress/prune50_ft.yaml",
           "pruned + KD from the unpruned": "configs/fashion_mnist/compress/prune50_kd.yaml",
           "low-rank + KD from the unfactorized": "configs/fashion_mnist/compress/lowrank90_kd.yaml",
           "QAT + KD from fp32 (its fp32 weights)": "configs/fashion_mnist/compress/qat_kd.yaml"}


def measure(model, shape, batches, runs, tmp: Path, tag: str, int8=None) -> dict:
    """Size and latency of ``model``; with ``int8`` (calibration reader), of its int8 ONNX file instead
    (eager latency is then the fp32 model's, as PyTorch runs no int8 here)."""
    model = model.cpu().eval()
    row = {"params": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, shape),
           "weights_kib": export_safetensors(model, tmp / f"{tag}.safetensors").stat().st_size / 1024}
    onnx_file = export_onnx(model, shape, tmp / f"{tag}.onnx")
    if int8 is not None:
        onnx_file = quantize_onnx(onnx_file, tmp / f"{tag}.int8.onnx", int8)
        row["weights_kib"] = onnx_file.stat().st_size / 1024
    session = onnx_session(onnx_file, torch.get_num_threads())
    for b in batches:
        x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(0))
        if int8 is None:
            with torch.inference_mode():
                row[f"eager_b{b}_ms"] = latency(lambda x=x: model(x), runs)["median_ms"]
        else:
            row[f"eager_b{b}_ms"] = float("nan")
        row[f"ort_b{b}_ms"] = latency(lambda x=x: session.run(None, {"input": x.numpy()}), runs)["median_ms"]
    row["onnx_file"] = onnx_file
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/fashion_mnist-teacher/checkpoint.pt")
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="fashion_mnist_compression")
    ap.add_argument("--calibration", type=int, default=512)
    args = ap.parse_args()
    batches = args.batch or [1, 256]
    torch.set_num_threads(args.threads)
    if not Path(args.teacher).is_file():
        print(f"{args.teacher} is missing: kdkit train configs/fashion_mnist/teacher.yaml", file=sys.stderr)
        return 2
    for recipe in RECIPES.values():
        cfg = load_config(recipe)
        run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
        if final_metrics(run_dir) is None:
            print(f"training {recipe} in {run_dir}", file=sys.stderr)
            from_config(cfg, run_dir=run_dir, log=lambda m: print(m, file=sys.stderr)).fit()
    teacher, _, loaders = checkpoint_network(args.teacher)
    shape = tuple(loaders.input_shape)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        measure(teacher, shape, batches, args.runs, Path(tmp), "warm")  # the process's first timings run slow
        rows["teacher (cnn_medium)"] = {"test_top1": evaluate(teacher, loaders.test)["top1"],
                                        **measure(teacher, shape, batches, args.runs, Path(tmp), "t")}
        pruned = copy.deepcopy(teacher)
        stats = structured_prune(pruned, shape, 0.5, importance="l2")
        rows["pruned, no recovery"] = {"test_top1": evaluate(pruned, loaders.test)["top1"],
                                       **measure(pruned, shape, batches, args.runs, Path(tmp), "p")}
        factorized = LowRank(energy=0.9).apply(copy.deepcopy(teacher))
        rows["low-rank (energy 0.9), no recovery"] = {"test_top1": evaluate(factorized, loaders.test)["top1"],
                                                      **measure(factorized, shape, batches, args.runs, Path(tmp), "l")}
        recovered = qat_model = None
        for name, recipe in RECIPES.items():
            cfg = load_config(recipe)
            ckpt = Path(cfg.train.out_dir) / cfg.train.run_name / "checkpoint.pt"
            model, _, _ = checkpoint_network(ckpt)
            rows[name] = {"test_top1": evaluate(model, loaders.test)["top1"],
                          **measure(model, shape, batches, args.runs, Path(tmp), f"r{len(rows)}")}
            if "pruned + KD" in name:
                recovered = model
            if name.startswith("QAT"):
                qat_model = model
        ds = loaders.dataset
        for name, model in (("teacher, int8 (ONNX Runtime)", teacher),
                            ("QAT + KD, int8 (ONNX Runtime)", qat_model),
                            ("pruned + KD, int8 (ONNX Runtime)", recovered)):
            reader = _Calibration(loaders.train.data, ds.mean, ds.std, args.calibration)
            row = measure(model, shape, batches, args.runs, Path(tmp), f"q{len(rows)}", int8=reader)
            rows[name] = {"test_top1": onnx_accuracy(row["onnx_file"], loaders.test)["top1"], **row}
        for r in rows.values():
            r.pop("onnx_file")
    base = rows["teacher (cnn_medium)"]
    head = ["model", "test top1", "params", "MACs", "weights KiB"] + [
        f"{k} b{b} ms (x faster)" for b in batches for k in ("eager", "ORT")]
    lines = [f"# Compression on Fashion-MNIST, the steps built so far ({args.threads} threads)", "",
             "Command: `python benchmarks/compression_table.py` (after `kdkit train "
             "configs/fashion_mnist/teacher.yaml`). "
             f"Pruning removed {100 * (1 - stats['macs_after'] / stats['macs_before']):.1f}% of the MACs "
             "(Torch-Pruning's count); low-rank: SVD / Tucker-2 keeping 90% of each mode's energy; recoveries: "
             "3 epochs, `configs/fashion_mnist/compress/{prune50_ft,prune50_kd,lowrank90_kd}.yaml`. "
             f"int8: static QDQ, per-channel weights, calibrated on {args.calibration} training images; its weights "
             "column is the int8 ONNX file, and PyTorch eager runs no int8 (-). "
             f"Latency: median of {args.runs} calls after 10 warm-up calls (and one discarded measurement of the "
             "teacher first), measured in this one run. One seed. "
             "QAT: 2 epochs with int8 fake quantization and KD from the fp32 teacher "
             "(`configs/fashion_mnist/compress/qat_kd.yaml`). Not yet here: unstructured pruning (dense latency "
             "unchanged by construction), NetAug, 3 seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, f"{r['test_top1']:.2f}", f"{r['params']:,}", f"{r['macs']:,}", f"{r['weights_kib']:.0f}"]
        for b in batches:
            for k in ("eager", "ort"):
                v = r[f"{k}_b{b}_ms"]
                cells.append(f"{v:.3f} ({base[f'{k}_b{b}_ms'] / v:.2f})" if v == v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    Path("docs/results").mkdir(parents=True, exist_ok=True)
    Path(f"docs/results/{args.name}.md").write_text("\n".join(lines) + "\n")
    Path(f"docs/results/{args.name}.json").write_text(json.dumps({"args": vars(args), "prune": stats, "rows": rows},
                                                                 indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
