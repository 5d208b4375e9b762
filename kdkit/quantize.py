"""Post-training static int8 quantization for CPU inference, with ONNX Runtime.

    kdkit quantize RUN/checkpoint.pt --out student.int8.onnx --calibration 512

The network is exported to ONNX (:func:`kdkit.export.export_onnx`), pre-processed (shape inference and
graph optimisation, ``quant_pre_process``), and quantized to the QDQ format with per-channel int8 weights
and int8 activations whose ranges are calibrated (min-max) on ``--calibration`` training images, without
augmentation. Then it is checked on the run's test set against the fp32 network: top-1 of both and their
agreement.

Why this path (issue 14 asked to pick one and say why): with torch 2.13 (pinned then) the PT2E flow
(``prepare_pt2e`` / ``convert_pt2e`` with the x86 inductor quantizer) lives in torchao, whose releases are
tied to torch releases; ``torchao.quantize_`` rewrites ``nn.Linear`` only, so a convolutional network
passes through it unchanged; the eager/FX ``torch.ao.quantization`` flow still exists but is deprecated.
ONNX Runtime's static QDQ quantization takes any exported graph, convolutions included, and runs it with
its int8 kernels on the CPU. int8 is not faster on every CPU or at every size:
``benchmarks/compression_table.py`` and a pipeline's ``profile`` measure what it is.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import batch as batch_protocol
from .engine.checkpoint import write_atomic
from .errors import ConfigError, KdkitError
from .export import checkpoint_network, export_onnx, onnx_session


class Calibration:
    """ONNX Runtime's calibration reader over the first ``n`` training images (no augmentation)."""

    def __init__(self, data, mean, std, n: int, batch: int = 64):
        from .data import BatchLoader

        idx = torch.arange(min(n, len(data)))
        loader = BatchLoader(data.subset(idx), batch, mean=mean, std=std)
        self.batches = [batch_protocol.onnx_feed(x) for x, _, _ in loader]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


SCHEMES = ("auto", "s8s8", "u8u8", "reduce_range")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pick_scheme(flags: set[str], machine: str | None = None) -> tuple[str, str]:
    """The int8 scheme this CPU's ONNX Runtime kernels compute exactly, and why. On x86 without VNNI,
    ONNX Runtime runs signed-activation int8 (S8S8, U8S8) convolutions and matrix products with
    VPMADDUBSW, whose 16-bit pairwise sums saturate: some outputs come out many quantization steps off.
    U8U8 uses other kernels that do not saturate; ``reduce_range`` (7-bit weights) avoids most of it at a
    cost in precision. With VNNI (32-bit accumulation) and on other processors S8S8 is exact."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return "s8s8", f"{machine} CPU: no VPMADDUBSW saturation"
    if {"avx512_vnni", "avx_vnni"} & flags:
        return "s8s8", "x86 with VNNI: int8 products accumulate in 32 bits"
    if "avx2" in flags:
        return "u8u8", ("x86 without VNNI: ONNX Runtime's S8S8/U8S8 kernels (VPMADDUBSW) saturate 16-bit sums; "
                        "U8U8 does not")
    return "s8s8", "x86 without AVX2: ONNX Runtime's plain int8 kernels, which do not saturate"


def resolve_scheme(scheme: str) -> tuple[str, str]:
    """``(scheme, why)``: ``auto`` becomes this machine's :func:`pick_scheme`; another is taken as asked."""
    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme must be one of {', '.join(SCHEMES)}, got '{scheme}'")
    return pick_scheme(cpu_flags()) if scheme == "auto" else (scheme, "asked for")


def quantize_onnx(fp32: Path, out: Path, calibration: Calibration, per_channel: bool = True,
                  scheme: str = "auto") -> Path:
    """Static int8 (QDQ) quantization of the ONNX file ``fp32`` into ``out`` (written atomically).
    ``scheme``: ``s8s8`` (signed activations and weights), ``u8u8`` (unsigned both), ``reduce_range``
    (S8S8 with 7-bit weights) or ``auto`` (:func:`resolve_scheme`)."""
    scheme, _ = resolve_scheme(scheme)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def get_next(self):
            return calibration.get_next()

        def rewind(self):
            calibration.rewind()

    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        try:
            quant_pre_process(str(fp32), str(pre))
            kind = QuantType.QUInt8 if scheme == "u8u8" else QuantType.QInt8
            quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=kind, weight_type=kind, reduce_range=scheme == "reduce_range")
        except Exception as e:  # noqa: BLE001  (ONNX Runtime's tools raise many kinds)
            raise KdkitError(f"int8 quantization failed: {type(e).__name__}: {str(e).strip()[:300]}") from None
        data = q.read_bytes()
    return write_atomic(out, lambda f: f.write(data))


def onnx_accuracy(path: Path, loader, reference: Path | None = None) -> dict[str, float]:
    """Top-1 (%) of an ONNX file on ``loader``; with ``reference``, in the same pass, the reference's
    top-1 (``reference_top1``) and their top-1 agreement."""
    session, ref = onnx_session(path), onnx_session(reference) if reference else None
    hits = ref_hits = agree = n = 0
    err_sum, err_max, scale = 0.0, 0.0, 0.0
    for x, y, _ in loader:
        feed, y = batch_protocol.onnx_feed(x), y.cpu().numpy()
        logits = session.run(None, feed)[0]
        pred = logits.argmax(1)
        hits += int((pred == y).sum())
        if ref is not None:
            ref_logits = ref.run(None, feed)[0]
            ref_pred = ref_logits.argmax(1)
            ref_hits += int((ref_pred == y).sum())
            agree += int((pred == ref_pred).sum())
            err = np.abs(logits.astype(np.float64) - ref_logits)
            err_sum, err_max = err_sum + float(err.sum()), max(err_max, float(err.max()))
            scale = max(scale, float(np.abs(ref_logits).max()))
        n += len(y)
    extra = {"reference_top1": 100.0 * ref_hits / n, "agreement": 100.0 * agree / n,
             "logit_error_mean": err_sum / max(n * logits.shape[1], 1), "logit_error_max": err_max,
             "logit_range": scale} if ref is not None else {}
    return {"top1": 100.0 * hits / n, **extra}


def quantize_checkpoint(checkpoint: str | Path, out: str | Path, net: str | None = None, calibration: int = 512,
                        per_channel: bool = True, fp32_out: str | Path | None = None,
                        scheme: str = "auto") -> dict[str, Any]:
    """Export, quantize and check one network of a checkpoint; returns the figures. ``scheme="auto"``
    takes the one this machine computes exactly (:func:`pick_scheme`); the result records it, why, and how
    far the int8 logits are from the fp32 ones."""
    if not 1 <= calibration <= 1 << 20:
        raise ConfigError(f"--calibration must be in [1, 1048576] images, got {calibration}")
    scheme, why = resolve_scheme(scheme)
    model, cfg, loaders = checkpoint_network(checkpoint, net)
    ds = loaders.dataset
    shape = loaders.input_shape
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, shape, Path(fp32_out) if fp32_out else Path(tmp) / "fp32.onnx")
        reader = Calibration(loaders.train.data, ds.mean, ds.std, calibration)
        path = quantize_onnx(fp32, Path(out), reader, per_channel, scheme)
        q = onnx_accuracy(path, loaders.test, reference=fp32)  # one pass: int8, fp32 and their agreement
        sizes = {"fp32_bytes": fp32.stat().st_size, "int8_bytes": path.stat().st_size}
    used = min(calibration, len(loaders.train.data))
    return {"checkpoint": str(checkpoint), "out": str(out), "calibration_images": used,
            "per_channel": per_channel, "scheme": scheme, "scheme_reason": why, "fp32_top1": q["reference_top1"],
            "int8_top1": q["top1"], "agreement": q["agreement"], "logit_error_mean": q["logit_error_mean"],
            "logit_error_max": q["logit_error_max"], "logit_range": q["logit_range"], **sizes}
