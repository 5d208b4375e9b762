"""`kdkit pipeline`: named runs in order, a later run taught (or initialised) by an earlier one; finished
runs are skipped and a killed pipeline resumes in the run where it stopped."""

import json

import pytest
import torch
import yaml

from kdkit.cli import main as cli
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import ConfigError
from kdkit.pipeline import load_pipeline, run_pipeline

BASE = {"data": {"name": "digits"}, "train": {"epochs": 2, "progress": False, "seed": 0}, "optim": {"lr": 0.05}}


def _write(tmp_path, runs, name="pipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "runs": runs}))
    return path


def _two_runs():
    return [{"name": "teacher", "config": {**BASE, "model": "cnn_small"}},
            {"name": "student", "config": {**BASE, "model": "cnn_tiny", "method": "kd"},
             "teacher": {"from": "teacher"}}]


def test_two_run_pipeline_through_the_cli(tmp_path, capsys):
    path = _write(tmp_path, _two_runs())
    assert cli(["pipeline", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["status"]) for r in rows] == [("teacher", "trained"), ("student", "trained")]
    assert all(r["test/top1"] > 50 for r in rows)
    student = yaml.safe_load((tmp_path / "runs" / "student" / "config.yaml").read_text())
    assert student["teacher"][0]["checkpoint"] == str(tmp_path / "runs" / "teacher" / "checkpoint.pt")
    assert "test/agreement" in rows[1]  # the student was distilled from that teacher
    assert cli(["pipeline", str(path)]) == 0  # again: everything is finished
    assert [json.loads(line)["status"] for line in capsys.readouterr().out.splitlines()] == ["skipped (finished)"] * 2


class _Killed(Exception):
    pass


def test_a_killed_pipeline_resumes_in_the_run_where_it_stopped(tmp_path):
    def kill(trainer, epoch, metrics):
        if trainer.run_dir.name == "student" and epoch == 1:
            raise _Killed

    (tmp_path / "a").mkdir()
    full = run_pipeline(_write(tmp_path / "a", _two_runs()), log=lambda m: None)  # uninterrupted
    assert [r["status"] for r in full] == ["trained", "trained"]
    path = _write(tmp_path, _two_runs())
    with pytest.raises(_Killed):
        run_pipeline(path, callbacks=[kill], log=lambda m: None)
    assert load_checkpoint(tmp_path / "runs" / "student" / "checkpoint.pt")["epoch"] == 1
    again = run_pipeline(path, log=lambda m: None)
    assert [r["status"] for r in again] == ["skipped (finished)", "resumed"]
    a = load_checkpoint(tmp_path / "a" / "runs" / "student" / "checkpoint.pt")["student"]
    b = load_checkpoint(tmp_path / "runs" / "student" / "checkpoint.pt")["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # as if it had never stopped


def test_repeat_chains_generations_and_init_takes_weights(tmp_path):
    runs = _two_runs() + [{"name": "ban", "config": {**BASE, "model": "cnn_tiny", "method": "kd"},
                           "init": {"from": "student"}, "teacher": {"from": "student"}, "repeat": 2,
                           "set": ["train.epochs=1"]}]
    rows = run_pipeline(_write(tmp_path, runs), log=lambda m: None)
    assert [r["run"] for r in rows] == ["teacher", "student", "ban.1", "ban.2", "ban (ensemble of 2)"]
    # the ensemble row: the two generations' mean logits, recomputed here by hand from their checkpoints
    from kdkit.config import load_config
    from kdkit.data import build_loaders
    from kdkit.models import create_model

    nets = []
    for g in ("ban.1", "ban.2"):
        net = create_model("cnn_tiny", num_classes=10, in_channels=1)
        net.load_state_dict(load_checkpoint(tmp_path / "runs" / g / "checkpoint.pt")["student"])
        nets.append(net.eval())
    test = build_loaders(load_config(base={**BASE, "model": "cnn_tiny"}).data, 0, torch.device("cpu")).test
    with torch.no_grad():
        hits = sum(int((torch.stack([n(x) for n in nets]).mean(0).argmax(1) == y).sum()) for x, y, _ in test)
    assert rows[-1]["test/top1"] == pytest.approx(100.0 * hits / len(test.data))
    root = tmp_path / "runs"
    cfg1 = yaml.safe_load((root / "ban.1" / "config.yaml").read_text())
    cfg2 = yaml.safe_load((root / "ban.2" / "config.yaml").read_text())
    assert cfg1["teacher"][0]["checkpoint"] == str(root / "student" / "checkpoint.pt")
    assert cfg2["teacher"][0]["checkpoint"] == str(root / "ban.1" / "checkpoint.pt")  # born-again chain
    assert cfg1["model"]["checkpoint"] == str(root / "student" / "checkpoint.pt")
    assert cfg1["train"]["epochs"] == 1
    assert (cfg1["train"]["seed"], cfg2["train"]["seed"]) == (0, 1)  # (issue 25) a seed per generation


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "config": {}, "teacher": {"from": "b"}}, {"name": "b", "config": {}}], "a later run"),
    ([{"name": "a", "config": {}}, {"name": "a", "config": {}}], "two runs are named 'a'"),
    ([{"name": "teacher", "config": {}}, {"name": "s", "config": {}, "teacher": {"from": "teachr"}}],
     "did you mean 'teacher'"),
    ([{"name": "a", "config": {}, "repeat": 0}], "repeat must be >= 1"),
    ([{"name": "a", "config": {}, "epochs": 3}], "unknown key"),
])
def test_pipeline_files_are_validated(tmp_path, runs, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, runs))


def test_init_from_another_architecture_is_refused(tmp_path):
    runs = _two_runs() + [{"name": "x", "config": {**BASE, "model": "cnn_medium"}, "init": {"from": "student"},
                           "set": ["train.epochs=1"]}]
    with pytest.raises(ConfigError, match="initialises a 'cnn_medium' from run 'student'"):
        run_pipeline(_write(tmp_path, runs), log=lambda m: None)


def _compress_runs():
    return [{"name": "teacher", "config": {**BASE, "model": "cnn_small"}},
            {"name": "pruned", "config": {**BASE, "model": {"name": "cnn_small", "transforms": [
                {"name": "prune", "ratio": 0.5}]}, "method": "kd", "optim": {"lr": 0.01}},
             "init": {"from": "teacher"}, "teacher": {"from": "teacher"}},
            {"name": "int8", "quantize": {"from": "pruned", "calibration": 64}},
            {"name": "onnx", "export": {"from": "pruned"}},
            {"name": "weights", "export": {"from": "pruned", "format": "safetensors"}}]


def test_prune_recover_quantize_export_pipeline_with_a_profiled_summary(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "runs": _compress_runs(),
                                    "profile": {"batches": [1, 8], "runs": 3}}))
    rows = run_pipeline(path, log=lambda m: None)
    assert [(r["run"], r["status"]) for r in rows] == [("teacher", "trained"), ("pruned", "trained"),
                                                      ("int8", "done"), ("onnx", "done"), ("weights", "done")]
    root = tmp_path / "runs"
    assert (root / "int8" / "model.int8.onnx").is_file() and (root / "onnx" / "model.onnx").is_file()
    assert (root / "weights" / "model.safetensors").is_file()
    assert rows[2]["test/top1"] > 80 and abs(rows[2]["test/top1"] - rows[1]["test/top1"]) < 3  # int8 on digits
    assert rows[3]["test/top1"] == pytest.approx(rows[1]["test/top1"], abs=0.3)  # ONNX fp32 = the network
    summary = json.loads((root / "summary.json").read_text())
    assert [r["run"] for r in summary] == ["teacher", "pruned", "int8"]
    assert summary[1]["macs"] <= 0.5 * summary[0]["macs"] and summary[1]["params"] < summary[0]["params"]
    assert summary[2]["weights_kib"] < summary[1]["weights_kib"]  # the int8 file is smaller than fp32 weights
    assert all(r["ort_b8_ms"] > 0 for r in summary) and summary[2]["eager_b8_ms"] != summary[2]["eager_b8_ms"]
    assert "| int8 | int8 (ONNX Runtime) |" in (root / "summary.md").read_text()
    assert (root / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # kdkit report over the pipeline's folder: its training runs and the summary's costs, with the plot
    assert cli(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in ("teacher", "pruned", "int8"))
    assert f"{summary[1]['macs']:,}" in page and f"{rows[1]['test/top1']:.2f}" in page
    assert (tmp_path / "rep" / "accuracy_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # again: training runs and steps are all finished; the steps are skipped, not redone
    stamp = (root / "int8" / "model.int8.onnx").stat().st_mtime_ns
    again = run_pipeline(path, log=lambda m: None)
    assert [r["status"] for r in again] == ["skipped (finished)"] * 5
    assert (root / "int8" / "model.int8.onnx").stat().st_mtime_ns == stamp
    assert again[2]["test/top1"] == rows[2]["test/top1"]


@pytest.mark.parametrize("runs,message", [
    ([{"name": "a", "quantize": {"from": "a"}}], "not an earlier run"),
    ([{"name": "t", "config": {**BASE, "model": "cnn_tiny"}}, {"name": "q", "quantize": {"from": "t"}},
      {"name": "e", "export": {"from": "q"}}], "a quantize/export step"),
    ([{"name": "t", "config": {**BASE, "model": "cnn_tiny"}, "quantize": {"from": "t"}}], "exactly one of"),
    ([{"name": "t"}], "exactly one of"),
    ([{"name": "t", "config": {**BASE, "model": "cnn_tiny"}}, {"name": "e", "export": {"from": "t", "format": "tf"}}],
     "onnx or safetensors"),
    ([{"name": "t", "config": {**BASE, "model": "cnn_tiny"}}, {"name": "q", "quantize": {"from": "t", "bits": 4}}],
     "optionally calibration, net"),
    ([{"name": "t", "config": {**BASE, "model": "cnn_tiny"}}, {"name": "q", "quantize": {"from": "t"},
                                                                "teacher": {"from": "t"}}], "belong to training runs"),
])
def test_bad_steps_are_refused_before_anything_runs(tmp_path, capsys, runs, message):
    path = _write(tmp_path, runs)
    assert cli(["pipeline", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_profile_is_refused(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "runs": _two_runs(),
                                    "profile": {"batches": [0]}}))
    assert cli(["pipeline", str(path)]) == 2
    assert "profile: batches" in capsys.readouterr().err


def test_the_shipped_pipelines_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "pipelines").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        load_pipeline(f)


def test_iterative_pruning_prunes_the_previous_rounds_network(tmp_path):
    prune = {**BASE, "model": {"name": "cnn_small", "transforms": [{"name": "prune", "ratio": 0.3}]},
             "method": "kd", "optim": {"lr": 0.01}, "train": {"epochs": 1, "progress": False, "seed": 0}}
    runs = [{"name": "dense", "config": {**BASE, "model": "cnn_small"}},
            {"name": "r1", "config": prune, "init": {"from": "dense"}, "teacher": {"from": "dense"}},
            {"name": "r2", "config": prune, "init": {"from": "r1"}, "teacher": {"from": "dense"}}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "runs": runs,
                                    "profile": {"batches": [2], "runs": 2}}))
    rows = run_pipeline(path, log=lambda m: None)
    assert all(r["test/top1"] > 60 for r in rows)
    macs = [r["macs"] for r in json.loads((tmp_path / "runs" / "summary.json").read_text())]
    assert macs[1] <= 0.7 * macs[0] and macs[2] <= 0.7 * macs[1]
    from kdkit.export import checkpoint_network

    r2, _, _ = checkpoint_network(tmp_path / "runs" / "r2" / "checkpoint.pt")  # rebuilt from plain data
    r1, _, _ = checkpoint_network(tmp_path / "runs" / "r1" / "checkpoint.pt")
    assert sum(p.numel() for p in r2.parameters()) < sum(p.numel() for p in r1.parameters())
