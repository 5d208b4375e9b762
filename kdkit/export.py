"""Exporting a trained network and measuring it: ONNX (with an ONNX Runtime parity check), safetensors
weights, and a profile (parameters, MACs, file size, CPU latency in PyTorch eager and ONNX Runtime,
test accuracy).

    kdkit export RUN/checkpoint.pt --out student.onnx          # format from the extension
    kdkit export RUN/checkpoint.pt --out student.safetensors
    kdkit profile RUN/checkpoint.pt --batch 1 --batch 64       # JSON on stdout, a table on stderr

ONNX goes through ``torch.onnx.export`` with the ``torch.export``-based exporter (``dynamo=True``, the
default since PyTorch 2.9; the TorchScript one is deprecated), a dynamic batch dimension, and is checked
against the PyTorch model on the test set: largest absolute logit difference and top-1 agreement.
MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs of matrix products and convolutions,
halved): PyTorch's own counter, which sees any module. Latency: median and 90th percentile of single
calls after a warm-up, at the stated thread count; a measurement of this machine at that moment, so it
belongs in benchmarks and reports, never in test assertions.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import batch as batch_protocol
from .engine.checkpoint import write_atomic
from .errors import ConfigError, KdkitError
from .tasks import create_task
from .tasks.segmentation import IGNORE
from .weight_share import plain


def own_input_shape(model: nn.Module, input_shape: Any) -> Any:
    """What ``model`` itself takes: ``input_shape``, or the shape of the one input its ``model.input`` picks
    of several (a cross-modal network is exported and timed on its own modality)."""
    key = getattr(model, "kdkit_input", None)
    if key is None or not batch_protocol.structured(input_shape):
        return input_shape
    return list(batch_protocol.select(batch_protocol.example(input_shape, 1), key).shape[1:])


def checkpoint_network(checkpoint: str | Path, net: str | None = None, device: str = "cpu",
                       data_root: str | None = None):
    """One trainable network of a kdkit checkpoint, rebuilt and loaded, in eval mode, with the run's config
    and its data loaders: ``(model, cfg, loaders)``. Pruning masks (``sparsify``) are made permanent and
    fake-quantization wrappers (``qat``) removed."""
    from .build import pick_device
    from .engine.rebuild import network_and_data

    loaded, loaders = network_and_data(checkpoint, net, pick_device(device), data_root)
    model, cfg = loaded.model.eval(), loaded.cfg
    from torch.nn.utils import prune as tprune

    for m in model.modules():  # a sparsified network's masks made permanent: plain weights, zeros included
        if hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    from .qat import unwrap

    return unwrap(model), cfg, loaders  # a quantization-aware network: its plain layers, for export


def export_onnx(model: nn.Module, input_shape: Any, out: str | Path) -> Path:
    """``model`` (eval mode, on the CPU) as one self-contained ONNX file with a dynamic batch dimension,
    written atomically. ``input_shape``: one input's shape, or an example batch of several inputs (a tuple:
    ONNX inputs ``input0``, ``input1``, ...; a dict: named by its keys; :mod:`kdkit.batch`)."""
    import warnings

    model = plain(model).cpu().eval()  # ONNX has no palette weights: the values they give
    example = batch_protocol.example(input_shape, 2)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if isinstance(example, dict):
        args, kwargs, dynamic = (), example, {k: {0: batch} for k in example}
    else:
        args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
        kwargs, dynamic = None, tuple({0: batch} for _ in args)
    # torch.onnx: "torchvision is not installed. Skipping torchvision::nms" ...; onnxscript's constant folding:
    # "Evaluation failed: ..." for a node it leaves unfolded (a BERT's attention-mask reshape), harmless
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript.optimizer._constant_folding")]
    levels = [q.level for q in quiet]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q in quiet:
            q.setLevel(logging.ERROR)
        tmp = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(model, args, str(tmp), kwargs=kwargs, dynamo=True,
                              input_names=batch_protocol.input_names(example), output_names=["logits"],
                              dynamic_shapes=dynamic, verbose=False, external_data=False)  # one self-contained file
        except Exception as e:  # noqa: BLE001  (the exporter raises many kinds)
            raise KdkitError(f"the model cannot be exported to ONNX: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:300]}") from None
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
        data = tmp.read_bytes()
    return write_atomic(out, lambda f: f.write(data))


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Session(nn.Module):
    """An ONNX Runtime session as a module (for :func:`~kdkit.engine.evaluate.evaluate`) that also records the
    largest absolute difference of its outputs from ``model``'s on the same inputs, and how many it saw."""

    def __init__(self, session, model: nn.Module):
        super().__init__()
        self.session, self.diff, self.images = session, 0.0, 0
        object.__setattr__(self, "model", model)  # not a submodule: evaluate() finds no parameters here

    def forward(self, *args, **kwargs):
        x = kwargs if kwargs else args[0] if len(args) == 1 else args  # the batch's inputs, as ``call`` passed them
        x = batch_protocol.select(x, getattr(self.model, "kdkit_input", None))  # the one the network takes
        o = torch.from_numpy(self.session.run(None, batch_protocol.onnx_feed(x))[0]).float()
        self.diff = max(self.diff, float((batch_protocol.call(self.model, x).float() - o).abs().max()))
        self.images += len(o)
        return o


@torch.no_grad()
def onnx_parity(model: nn.Module, path: str | Path, loader, task=None) -> dict[str, float]:
    """The ONNX file against the PyTorch model on every batch of ``loader``: the largest absolute logit
    difference, top-1 agreement (%), and each one's top-1 accuracy (%), per prediction: per image, or per
    pixel for segmentation masks (their ignored pixels left out of the accuracies). For a task whose
    evaluation gathers records (detection: argmax agreement means nothing there), each one's primary metric
    instead: ``metric`` names it, ``torch_<metric>`` and ``onnx_<metric>``."""
    session = onnx_session(path)
    model = model.cpu().eval()
    if task is not None and task.gathered:
        from .engine.evaluate import evaluate

        p = task.primary
        torch_metric = evaluate(model, loader, task=task)[p]
        onnx = _Session(session, model)  # one pass: ONNX Runtime's metric and its difference from the model
        onnx_metric = evaluate(onnx, loader, task=task)[p]
        return {"max_abs_diff": onnx.diff, "metric": p, f"torch_{p}": torch_metric, f"onnx_{p}": onnx_metric,
                "images": onnx.images}
    diff, agree, hit_t, hit_o, n, m, images = 0.0, 0, 0, 0, 0, 0, 0
    for x, y, _ in loader:
        x, y = batch_protocol.select(batch_protocol.to_device(x, "cpu"), getattr(model, "kdkit_input", None)), y.cpu()
        z = batch_protocol.call(model, x).float()
        o = torch.from_numpy(session.run(None, batch_protocol.onnx_feed(x))[0]).float()
        diff = max(diff, float((z - o).abs().max()))
        keep = y != IGNORE if y.dim() > 1 else torch.ones_like(y, dtype=torch.bool)
        agree += int((z.argmax(1) == o.argmax(1)).sum())
        hit_t += int(((z.argmax(1) == y) & keep).sum())
        hit_o += int(((o.argmax(1) == y) & keep).sum())
        n, m, images = n + y.numel(), m + int(keep.sum()), images + len(y)
    return {"max_abs_diff": diff, "top1_agreement": 100.0 * agree / max(n, 1), "torch_top1": 100.0 * hit_t / max(m, 1),
            "onnx_top1": 100.0 * hit_o / max(m, 1), "images": images}


def export_safetensors(model: nn.Module, out: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """The model's weights (state dict) as a safetensors file, with ``metadata`` (JSON strings) in its
    header; written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    return write_atomic(out, lambda f: f.write(data))


def timing_input(input_shape: Any, n: int) -> Any:
    """A batch of ``n`` inputs to time a network on: seeded normal noise of ``[n, *shape]``, or the example
    batch's samples repeated (several inputs: token ids and masks must stay valid)."""
    if batch_protocol.structured(input_shape):
        return batch_protocol.example(input_shape, n)
    return torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(0))


def count_macs(model: nn.Module, input_shape: Any) -> int:
    """Multiply-accumulates of one forward pass on one input (a shape, or an example batch of several
    inputs): FLOPs of PyTorch's counter, halved."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters(), None)
    x = batch_protocol.example(input_shape, 1, p.device if p is not None else "cpu")
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        batch_protocol.call(model, x)
    model.train(was)
    return counter.get_total_flops() // 2


def latency(fn: Callable[[], Any], runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """Median and 90th percentile (ms) of ``runs`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))]}


def profile(checkpoint: str | Path, net: str | None = None, batches: tuple[int, ...] = (1, 64), runs: int = 50,
            threads: int | None = None, onnx: bool = True, data_root: str | None = None) -> dict[str, Any]:
    """Size, cost, speed and accuracy of one network of a checkpoint (on the CPU)."""
    from .engine.evaluate import evaluate

    if any(b < 1 or b > 65536 for b in batches) or not 1 <= runs <= 100000:
        raise ConfigError("--batch must be in [1, 65536] and --runs in [1, 100000]")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model, cfg, loaders = checkpoint_network(checkpoint, net, "cpu", data_root)
    shape = own_input_shape(model, loaders.input_shape)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "net": net or "student", "model": cfg.model.name,
        "input_shape": batch_protocol.shapes(batch_protocol.example(shape, 1)),
        "params": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, shape),
        "checkpoint_bytes": Path(checkpoint).stat().st_size, "threads": threads,
        "latency": {}, "sample": loaders.dataset.noun.removesuffix("s")}
    task = create_task(cfg.task)
    result["test_metric"] = task.primary
    result[f"test_{task.primary}"] = evaluate(model, loaders.test, task=task)[task.primary]
    with tempfile.TemporaryDirectory() as tmp:
        weights = export_safetensors(model, Path(tmp) / "w.safetensors")
        result["weights_bytes"] = weights.stat().st_size
        session = None
        if onnx:
            path = export_onnx(model, shape, Path(tmp) / "m.onnx")
            result["onnx_bytes"] = path.stat().st_size
            result["onnx"] = onnx_parity(model, path, loaders.test, task)
            session = onnx_session(path, threads)
        for b in batches:
            x = timing_input(shape, b)
            with torch.inference_mode():
                row = {"eager": latency(lambda x=x: batch_protocol.call(model, x), runs)}
            if session is not None:
                feed = batch_protocol.onnx_feed(x)
                row["onnxruntime"] = latency(lambda feed=feed: session.run(None, feed), runs)
            result["latency"][str(b)] = row
    return result


def export_network(source: str | Path, net: str | None, fmt: str, out: str | Path) -> dict[str, Any]:
    """One network of a checkpoint written as ``onnx`` (checked against PyTorch on the test set:
    :func:`onnx_parity`) or ``safetensors`` (with the model's name, arguments, classes and input shape as
    metadata); returns what was written and the check."""
    model, cfg, loaders = checkpoint_network(source, net)
    if fmt == "safetensors":  # plain weights for other tools (weight_share's palette dequantized)
        model = plain(model)
        export_safetensors(model, out, {"model": cfg.model.name, "kwargs": dict(cfg.model.kwargs),
                                        "num_classes": loaders.dataset.num_classes,
                                        "input_shape": batch_protocol.shapes(batch_protocol.example(
                                            own_input_shape(model, loaders.input_shape), 1))})
        return {"out": str(out)}
    export_onnx(model, own_input_shape(model, loaders.input_shape), out)
    return {"out": str(out), **onnx_parity(model, out, loaders.test, create_task(cfg.task))}


def parity_text(check: dict[str, Any]) -> str:
    """What :func:`onnx_parity` found, in words."""
    if "metric" in check:
        m = check["metric"]
        return (f"{m} {check['onnx_' + m]:.2f} vs {check['torch_' + m]:.2f}, max |output diff| "
                f"{check['max_abs_diff']:.2e}")
    return (f"accuracy {check['onnx_top1']:.2f} vs {check['torch_top1']:.2f}, top-1 agreement "
            f"{check['top1_agreement']:.2f}%, max |logit diff| {check['max_abs_diff']:.2e}")


def format_profile(p: dict[str, Any]) -> str:
    metric = p.get("test_metric", "top1")
    lines = [f"{p['model']} ({p['net']}) from {p['checkpoint']}: {p['params']:,} parameters, {p['macs']:,} MACs "
             f"per {p.get('sample', 'image')}, checkpoint {p['checkpoint_bytes'] / 1024:.0f} KiB, "
             f"weights {p['weights_bytes'] / 1024:.0f} KiB"
             + (f", ONNX {p['onnx_bytes'] / 1024:.0f} KiB" if "onnx_bytes" in p else ""),
             f"test {metric} {p['test_' + metric]:.2f}"
             + (f" (ONNX Runtime: {parity_text(p['onnx'])})" if "onnx" in p else ""),
             f"CPU latency, {p['threads']} thread(s), median / p90 ms:"]
    for b, row in p["latency"].items():
        timings = "; ".join(f"{k} {v['median_ms']:.3f} / {v['p90_ms']:.3f}" for k, v in row.items())
        lines.append(f"  batch {b}: {timings}")
    return "\n".join(lines)


def predict_onnx(path: str | Path, x: Tensor) -> Tensor:
    """Logits of an ONNX file on ``x`` (CPU)."""
    return torch.from_numpy(onnx_session(path).run(None, {"input": x.cpu().numpy()})[0])
