"""Export and measurement: ONNX files agree with PyTorch under ONNX Runtime (plain, residual and one
branch of a branched network), safetensors weights reload exactly, MACs against a count written out,
`kdkit profile` fields, atomic writes with the usual file mode, and clear errors."""

import json
import os
import stat

import pytest
import torch
from torch import nn

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.engine.checkpoint import write_atomic
from kdkit.export import checkpoint_network, count_macs, export_onnx, latency, predict_onnx


def _run(tmp_path, capsys, *args):
    capsys.readouterr()
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", ["cnn_small", "resnet8"])
def test_onnx_export_matches_pytorch(model, tmp_path):
    torch.manual_seed(0)
    from kdkit.models import create_model

    m = create_model(model, num_classes=10).eval()
    path = export_onnx(m, (3, 16, 16), tmp_path / "m.onnx")
    for batch in (1, 64):  # the batch dimension is dynamic
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(predict_onnx(path, x), m(x), rtol=1e-4, atol=1e-4)


def test_export_cli_onnx_and_safetensors(tmp_path, capsys, teacher_ckpt):
    code, out, err = _run(tmp_path, capsys, "export", teacher_ckpt, "--out", str(tmp_path / "t.onnx"))
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out
    model, cfg, loaders = checkpoint_network(teacher_ckpt)
    x, _, _ = next(iter(loaders.test))
    with torch.no_grad():
        torch.testing.assert_close(predict_onnx(tmp_path / "t.onnx", x), model(x), rtol=1e-4, atol=1e-4)
    assert stat.S_IMODE(os.stat(tmp_path / "t.onnx").st_mode) == 0o666 & ~_umask()

    code, out, err = _run(tmp_path, capsys, "export", teacher_ckpt, "--out", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    from safetensors import safe_open
    from safetensors.torch import load_file

    from kdkit.models import create_model

    fresh = create_model("cnn_small", num_classes=10, in_channels=loaders.dataset.in_channels).eval()
    fresh.load_state_dict(load_file(tmp_path / "t.safetensors"))
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["model"] == "cnn_small" and meta["num_classes"] == 10


def test_export_one_branch_as_onnx(tmp_path, capsys):
    cfg = {"model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": 2, "gate": True}]},
           "method": {"name": "one", "rampup_epochs": 1}, "data": {"name": "digits"},
           "train": {"epochs": 1, "progress": False, "seed": 0}}
    trainer = from_config(load_config(base=cfg), run_dir=tmp_path / "r", log=lambda m: None)
    result = trainer.fit()
    code, out, err = _run(tmp_path, capsys, "export", str(tmp_path / "r" / "checkpoint.pt"), "--branch", "1",
                          "--out", str(tmp_path / "b.onnx"))
    assert code == 0, err
    onnx_top1 = float(out.split("accuracy ")[1].split(" vs")[0])
    assert onnx_top1 == pytest.approx(result["test/branch1/top1"], abs=0.01)


def test_macs_against_a_count_written_out():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    conv = (8 * 8 * 8) * (3 * 3 * 3)  # each output element: 3 channels x 3 x 3 products
    linear = (8 * 8 * 8) * 10
    assert count_macs(model, (3, 8, 8)) == conv + linear
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: one input channel per output
    assert count_macs(grouped, (8, 8, 8)) == (8 * 8 * 8) * 9


def test_latency_summary_is_ordered():
    r = latency(lambda: sum(range(1000)), runs=20, warmup=2)
    assert 0 < r["median_ms"] <= r["p90_ms"]


def test_profile_through_the_cli(tmp_path, capsys, teacher_ckpt):
    code, out, err = _run(tmp_path, capsys, "profile", teacher_ckpt, "--batch", "1", "--batch", "8", "--runs", "3",
                          "--threads", "1")
    assert code == 0, err
    p = json.loads(out.splitlines()[-1])
    model, _, _ = checkpoint_network(teacher_ckpt)
    assert p["params"] == sum(q.numel() for q in model.parameters()) and p["macs"] > p["params"]
    assert set(p["latency"]) == {"1", "8"} and set(p["latency"]["1"]) == {"eager", "onnxruntime"}
    assert p["onnx"]["top1_agreement"] == 100.0 and p["onnx"]["onnx_top1"] == pytest.approx(p["test_top1"])
    assert p["threads"] == 1 and "CPU latency, 1 thread(s)" in err
    # (issue 25) the output, saved to a file, goes into a report's cost table
    (tmp_path / "profile.json").write_text(out.splitlines()[-1])
    code, out, err = _run(tmp_path, capsys, "compare", str(tmp_path / "profile.json"))
    assert code == 0 and "skipped" not in err, err
    row = next(line for line in out.splitlines() if line.startswith("cnn_small (student,"))
    assert f"{p['params']:,}" in row and f"{p['test_top1']:.2f}" in row
    assert f"{p['latency']['8']['onnxruntime']['median_ms']:.3f}" in row


@pytest.mark.parametrize("args,code,message", [
    (["export", "{ckpt}", "--out", "{tmp}/x.pt"], 2, "--branch k"),
    (["export", "{ckpt}", "--out", "{tmp}/x.onnx", "--branch", "0"], 2, "is not branched"),
    (["profile", "{ckpt}", "--batch", "0"], 2, "--batch must be in [1, 65536]"),
    (["profile", "{ckpt}", "--threads", "0"], 2, "--threads must be >= 1"),
    (["profile", "{tmp}/missing.pt"], 4, "checkpoint not found"),
])
def test_export_and_profile_errors(args, code, message, tmp_path, capsys, teacher_ckpt):
    argv = [a.format(ckpt=teacher_ckpt, tmp=tmp_path) for a in args]
    got, out, err = _run(tmp_path, capsys, *argv)
    assert got == code and message in err and "Traceback" not in err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    path = write_atomic(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_model_that_cannot_be_exported_is_a_clear_error(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return {"logits": x.flatten(1)}, "not a tensor"

    from kdkit.errors import KdkitError

    with pytest.raises(KdkitError, match="cannot be exported to ONNX"):
        export_onnx(Odd(), (3, 4, 4), tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_int8_quantization_keeps_accuracy_on_real_digits(tmp_path, capsys, teacher_ckpt):
    import onnx

    code, out, err = _run(tmp_path, capsys, "quantize", teacher_ckpt, "--out", str(tmp_path / "q.onnx"),
                          "--calibration", "256", "--fp32-out", str(tmp_path / "f.onnx"), "--scheme", "s8s8")
    assert code == 0, err
    r = json.loads(out.splitlines()[-1])
    assert r["scheme"] == "s8s8" and r["scheme_reason"] == "asked for"
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8 QDQ
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8 and r["int8_bytes"] < r["fp32_bytes"] / 2  # the weights are stored as int8
    # the 359 real test images: int8 agrees with fp32 on nearly all of them, and loses little accuracy
    assert r["agreement"] >= 97.0 and r["int8_top1"] >= r["fp32_top1"] - 2.0
    model, _, loaders = checkpoint_network(teacher_ckpt)
    x, y, _ = next(iter(loaders.test))
    q = predict_onnx(tmp_path / "q.onnx", x)
    with torch.no_grad():
        z = model(x)
    assert (q.argmax(1) == z.argmax(1)).float().mean() >= 0.95
    assert (q - z).abs().max() < 0.5 * z.abs().max()  # close, not equal: int8 rounds


def test_the_int8_scheme_follows_the_cpu_and_is_recorded_with_its_error(tmp_path, capsys, teacher_ckpt):
    from kdkit.quantize import pick_scheme

    assert pick_scheme({"avx2", "fma"}, "x86_64")[0] == "u8u8"  # VPMADDUBSW saturates without VNNI
    assert pick_scheme({"avx2", "avx512f", "avx512_vnni"}, "x86_64")[0] == "s8s8"
    assert pick_scheme({"avx2", "avx_vnni"}, "x86_64")[0] == "s8s8"
    assert pick_scheme(set(), "aarch64")[0] == "s8s8"
    import onnx

    code, out, err = _run(tmp_path, capsys, "quantize", teacher_ckpt, "--out", str(tmp_path / "q.onnx"),
                          "--calibration", "256", "--scheme", "u8u8")
    assert code == 0, err
    r = json.loads(out.splitlines()[-1])
    kinds = {t.data_type for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    assert onnx.TensorProto.UINT8 in kinds and onnx.TensorProto.INT8 not in kinds
    assert r["scheme"] == "u8u8" and r["agreement"] >= 97.0
    assert 0 < r["logit_error_mean"] <= r["logit_error_max"] < r["logit_range"]
    assert "u8u8 (asked for)" in err and "logits off by" in err
    code, out, _ = _run(tmp_path, capsys, "quantize", teacher_ckpt, "--out", str(tmp_path / "a.onnx"),
                        "--calibration", "64")
    assert code == 0 and json.loads(out.splitlines()[-1])["scheme"] in ("s8s8", "u8u8")  # auto: this CPU's


def test_quantize_errors(tmp_path, capsys, teacher_ckpt):
    code, _, err = _run(tmp_path, capsys, "quantize", teacher_ckpt, "--out", str(tmp_path / "q.onnx"),
                        "--calibration", "0")
    assert code == 2 and "--calibration must be in" in err
