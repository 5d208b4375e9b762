"""What a compressed network costs and buys, measured the same way everywhere (the compression benchmark,
pipeline summaries): parameters, MACs, weight size, and CPU latency in PyTorch eager and in ONNX Runtime
(fp32, or the int8 file of :mod:`kdkit.quantize`); and the accuracy-vs-latency plot."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import batch as batch_protocol
from .engine.checkpoint import write_atomic
from .export import count_macs, export_onnx, export_safetensors, latency, onnx_session, timing_input


def measure_network(model: nn.Module, shape: tuple[int, ...], batches: Sequence[int], runs: int, workdir: Path,
                    tag: str, int8=None, onnx_file: Path | None = None) -> dict[str, Any]:
    """Size and latency of ``model`` on the CPU (median and p90 ms over ``runs`` calls after 10 warm-up
    calls, at each batch size, with torch's current thread count). With ``int8`` (a calibration reader)
    the ONNX Runtime figures and the size are those of its static int8 file (PyTorch eager runs no int8:
    its figures are NaN); ``onnx_file`` measures an existing ONNX file instead of exporting ``model``."""
    from .quantize import quantize_onnx

    model = model.cpu().eval()
    row: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, shape),
                           "threads": torch.get_num_threads()}
    row["weights_kib"] = export_safetensors(model, workdir / f"{tag}.safetensors").stat().st_size / 1024
    if onnx_file is None:
        onnx_file = export_onnx(model, shape, workdir / f"{tag}.onnx")
        if int8 is not None:
            onnx_file = quantize_onnx(onnx_file, workdir / f"{tag}.int8.onnx", int8)  # scheme: this CPU's
    quantized = int8 is not None or onnx_file.name.endswith(".int8.onnx")
    if quantized:
        row["weights_kib"] = onnx_file.stat().st_size / 1024
    session = onnx_session(onnx_file, torch.get_num_threads())
    for b in batches:
        x = timing_input(shape, b)
        if not quantized:
            with torch.inference_mode():
                t = latency(lambda x=x: batch_protocol.call(model, x), runs)
            row[f"eager_b{b}_ms"], row[f"eager_b{b}_p90_ms"] = t["median_ms"], t["p90_ms"]
        else:
            row[f"eager_b{b}_ms"] = row[f"eager_b{b}_p90_ms"] = float("nan")
        feed = batch_protocol.onnx_feed(x)
        t = latency(lambda feed=feed: session.run(None, feed), runs)
        row[f"ort_b{b}_ms"], row[f"ort_b{b}_p90_ms"] = t["median_ms"], t["p90_ms"]
    row["onnx_file"] = str(onnx_file)
    return row


def accuracy_latency_plot(points: Sequence[dict[str, Any]], out: str | Path, xlabel: str, title: str) -> Path:
    """:func:`accuracy_latency_png` written atomically to ``out``."""
    data = accuracy_latency_png(points, xlabel, title)
    return write_atomic(Path(out), lambda f: f.write(data))


def accuracy_latency_png(points: Sequence[dict[str, Any]], xlabel: str, title: str) -> bytes:
    """A PNG of test accuracy against latency, one labelled point per entry of ``points`` (``label``,
    ``latency_ms``, ``top1``, and optionally ``top1_std``, drawn as an error bar); the latency axis is
    logarithmic when it spans more than a factor 5."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for p in points:
        x, y = p["latency_ms"], p["top1"]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.errorbar([x], [y], yerr=[p.get("top1_std") or 0.0], fmt="o", capsize=3)
        ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    xs = [p["latency_ms"] for p in points if math.isfinite(p["latency_ms"]) and p["latency_ms"] > 0]
    log_scale = bool(xs) and max(xs) / min(xs) > 5  # a narrow range reads better on a linear axis
    if log_scale:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel + (" (log scale)" if log_scale else ""))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return figure_png(fig)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tightly), the figure closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
