"""The profiled summary of a pipeline (``profile:`` in a pipeline file): every network the pipeline made,
measured one after another in this process (:func:`kdkit.measure.measure_network`), as a table
(``summary.md``), data (``summary.json``) and an accuracy-vs-latency plot (``summary.png``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .engine.checkpoint import write_atomic


def profile_pipeline(summary: list[dict[str, Any]], profile, root: Path,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure the network of every training run and quantize step in ``summary`` (the rows
    :func:`kdkit.pipeline.run_pipeline` returns) and write the summary files into ``root``."""
    from .export import checkpoint_network
    from .measure import accuracy_latency_plot, measure_network

    if profile.threads is not None:
        torch.set_num_threads(profile.threads)
    load = os.getloadavg()[0]  # other work on the machine distorts every latency: say how busy it was
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k, entry in enumerate(summary):
            if entry["status"] == "ensemble" or entry.get("step") == "export":
                continue  # an ensemble is several networks; an export is its source's network, rewritten
            quantized = entry.get("step") == "quantize"
            ckpt = Path(entry["source"]) if quantized else Path(entry["dir"]) / "checkpoint.pt"
            model, _, loaders = checkpoint_network(ckpt, entry.get("net") if quantized else None)
            log(f"pipeline: measuring {entry['run']}")
            if k == 0:  # the process's first timings run slow: one measurement discarded
                measure_network(model, loaders.input_shape, profile.batches, profile.runs, work, "warm")
            row = measure_network(model, loaders.input_shape, profile.batches, profile.runs, work, f"n{k}",
                                  onnx_file=Path(entry["file"]) if quantized else None)
            rows.append({"run": entry["run"], "kind": "int8 (ONNX Runtime)" if quantized else "trained",
                         "test_top1": entry.get("test/top1", float("nan")),
                         **{key: v for key, v in row.items() if key != "onnx_file"}})
    batches = profile.batches
    head = ["run", "kind", "test top1", "params", "MACs", "weights KiB"] + [
        f"{k} b{b} ms (median / p90)" for b in batches for k in ("eager", "ORT")]
    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    lines = [f"# Pipeline summary: {root}", "",
             f"CPU latency with {threads} thread(s): median / p90 of {profile.runs} calls after 10 warm-up "
             "calls, measured one network after another in one process. int8 rows: the static int8 ONNX file "
             "(weights KiB is its size; PyTorch eager runs no int8: -). "
             f"Load average when the measurement began: {load:.2f} on {os.cpu_count()} CPUs (with other work "
             "running, threads wait on each other and latencies can be many times the quiet figures).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], r["kind"], f"{r['test_top1']:.2f}", f"{r['params']:,}", f"{r['macs']:,}",
                 f"{r['weights_kib']:.0f}"]
        for b in batches:
            for k in ("eager", "ort"):
                v, p90 = r[f"{k}_b{b}_ms"], r[f"{k}_b{b}_p90_ms"]
                cells.append(f"{v:.3f} / {p90:.3f}" if v == v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    b = max(batches)
    lines += ["", f"![test top-1 against ONNX Runtime latency at batch {b}](summary.png)", ""]
    root.mkdir(parents=True, exist_ok=True)
    accuracy_latency_plot([{"label": r["run"], "latency_ms": r[f"ort_b{b}_ms"], "top1": r["test_top1"]} for r in rows],
                          root / "summary.png", f"ONNX Runtime latency, batch {b}, {threads} thread(s) (ms)",
                          f"pipeline {root.name}: accuracy against latency")
    write_atomic(root / "summary.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    write_atomic(root / "summary.json", lambda f: f.write(json.dumps(rows, indent=1).encode()))
    log(f"pipeline: summary in {root / 'summary.md'} and {root / 'summary.png'}")
    return rows
