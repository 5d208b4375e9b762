"""No file runs code unasked (docs/robustness.md, "What is data, what is code"): a model name read from a
checkpoint or a stored config never imports a module, whatever command reads it; a recipe's names
import only the module they name, never from the working folder, and only ``nn.Module`` classes or
registered factories are called. Each command runs in a fresh process (``python -m kdkit``, which puts the
working folder first on ``sys.path``) in a folder holding a module that writes PWNED when imported."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import HANG_S

from kdkit.config import load_config

SIDE_EFFECT = "open('PWNED', 'w').write('x')\nimport torch.nn as nn\nclass Net(nn.Module):\n    pass\n"
MYNETS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""
BASE = {"data": {"name": "digits", "limit_train": 256}, "optim": {"lr": 0.05},
        "train": {"epochs": 1, "progress": False, "seed": 0}}


def kdkit(folder, *args):
    p = subprocess.run([sys.executable, "-m", "kdkit", *map(str, args)], cwd=folder, capture_output=True, text=True,
                       timeout=HANG_S)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished cnn_tiny run: its folder (checkpoint.pt, best.pt, config.yaml, metrics.jsonl)."""
    from kdkit import from_config

    out = tmp_path_factory.mktemp("trust")
    cfg = load_config(base={**BASE, "model": "cnn_tiny", "train": {**BASE["train"], "out_dir": str(out),
                                                                    "run_name": "run"}})
    from_config(cfg, log=lambda m: None).fit()
    return out / "run"


def tampered(folder, run, name, kwargs=None):
    """A copy of ``run`` in ``folder`` whose checkpoints and config.yaml name the model ``name``."""
    dst = folder / "run"
    shutil.copytree(run, dst)
    for file in ("checkpoint.pt", "best.pt"):
        c = torch.load(dst / file, weights_only=True)
        c["config"]["model"] = {"name": name, "kwargs": kwargs or {}}
        c["model"] = {**c["model"], "name": name, "kwargs": kwargs or {}}
        torch.save(c, dst / file)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["model"] = {**cfg["model"], "name": name, "kwargs": kwargs or {}}
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


@pytest.mark.parametrize("module", ["sidefx", "this"])  # a module of the working folder; the standard library's
def test_a_checkpoint_imports_nothing_through_any_command(tmp_path, finished_run, module):
    (tmp_path / "sidefx.py").write_text(SIDE_EFFECT)
    run = tampered(tmp_path, finished_run, f"{module}:Net")
    lines = [
        ["eval", run / "checkpoint.pt"],
        ["export", run / "best.pt", "--out", tmp_path / "m.onnx"],
        ["profile", run / "best.pt", "--runs", "1", "--batch", "1", "--no-onnx"],
        ["quantize", run / "best.pt", "--out", tmp_path / "m.int8.onnx"],
        ["train", "--resume", run, "--epochs", "2"],
    ]
    pipe = tmp_path / "pipe.yaml"  # a pipeline whose finished first run is the tampered one
    (tmp_path / "p").mkdir()
    shutil.copytree(run, tmp_path / "p" / "a")
    pipe.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "p"), "runs": [
        {"name": "a", "config": {**BASE, "model": "cnn_tiny"}},
        {"name": "b", "config": {**BASE, "model": "cnn_tiny", "method": "kd"}, "teacher": {"from": "a"}}]}))
    lines.append(["pipeline", pipe])
    for args in lines:
        p = kdkit(tmp_path, *args)
        err = [line for line in p.stderr.splitlines() if line.startswith("kdkit: error:")]
        assert p.returncode == 4 and len(err) == 1, (args, p.stderr[-2000:])
        assert f"module '{module}' was not imported on your word" in err[0] and f"--plugin {module}" in err[0]
        assert not (tmp_path / "PWNED").exists() and "Beautiful is better" not in p.stdout + p.stderr, args
    assert not (tmp_path / "p" / "b").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name,kwargs,message", [
    ("os:system", {"command": "touch PWNED"}, "'os.system' is a function, not an nn.Module subclass"),
    ("subprocess:run", {"args": ["touch", "PWNED"]}, "'subprocess.run' is a function"),
    ("builtins:eval", {"source": "open('PWNED', 'w')"}, "'builtins.eval' is a function"),
    ("builtins:open", {"file": "PWNED", "mode": "w"}, "'builtins.open' is a function"),
    ("pathlib:Path.touch", {"self": "PWNED"}, "'pathlib.Path.touch' is a function"),
    ("sidefx:Net", {}, "'sidefx' is in the working folder, which kdkit does not import from unasked: pass "
                       "--plugin sidefx.py"),
])
def test_a_recipe_runs_no_function_and_no_file_of_the_working_folder(tmp_path, name, kwargs, message):
    (tmp_path / "sidefx.py").write_text(SIDE_EFFECT)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**BASE, "model": {"name": name, "kwargs": kwargs}}))
    for command in (["train", "r.yaml"], ["inspect", name, "--input-shape", "1,8,8"]):
        p = kdkit(tmp_path, *command)
        err = [line for line in p.stderr.splitlines() if line.startswith("kdkit: error:")]
        assert p.returncode == 2 and len(err) == 1 and message in err[0], p.stderr
        assert not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()


def test_a_plugin_cannot_make_a_function_reachable(tmp_path, finished_run):
    run = tampered(tmp_path, finished_run, "os:system", {"command": "touch PWNED"})
    p = kdkit(tmp_path, "--plugin", "os", "eval", run / "checkpoint.pt")
    assert p.returncode == 4 and "'os.system' is a function, not an nn.Module subclass" in p.stderr
    assert not (tmp_path / "PWNED").exists()


def test_the_users_own_module_works_through_train_eval_and_pipelines(tmp_path):
    (tmp_path / "mynets.py").write_text(MYNETS)
    recipe = {**BASE, "model": {"name": "mynets:Net", "kwargs": {"width": 4}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "train": {**BASE["train"], "run_name": "mine"}}))
    p = kdkit(tmp_path, "--plugin", "mynets.py", "train", "r.yaml")
    assert p.returncode == 0, p.stderr
    trained = json.loads(p.stdout.strip().splitlines()[-1])
    ckpt = tmp_path / "runs" / "mine" / "checkpoint.pt"
    p = kdkit(tmp_path, "eval", ckpt)  # the checkpoint names mynets:Net; nothing imports it unasked
    assert p.returncode == 4 and "pass --plugin mynets" in p.stderr
    for plugin in ("mynets.py", "mynets"):  # a file, or a module of the working folder named by the user
        p = kdkit(tmp_path, "--plugin", plugin, "eval", ckpt, "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["top1"] == pytest.approx(trained["test/top1"])
    p = kdkit(tmp_path, "--plugin", "mynets.py", "train", "--resume", tmp_path / "runs" / "mine", "--epochs", "2")
    assert p.returncode == 0, p.stderr
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump({"out_dir": str(tmp_path / "p"), "runs": [
        {"name": "a", "config": recipe},
        {"name": "b", "config": {**recipe, "method": "kd"}, "teacher": {"from": "a"}}]}))
    p = kdkit(tmp_path, "--plugin", "mynets.py", "pipeline", "pipe.yaml")
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["status"] for line in p.stdout.splitlines()] == ["trained", "trained"]


# ----------------------------------------------------------------------------- a pipeline on a full disk
def _mount(folder, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
def test_a_pipeline_on_a_full_disk_stops_with_exit_6_and_continues_once_there_is_room(tmp_path):
    """A real full disk (a small tmpfs; skipped where mounting is not allowed): wherever the pipeline runs out
    of room (a checkpoint, best.pt, the ONNX file), one line and exit 6; once there is room, rerunning it
    finishes with the runs already done kept."""
    pipe = tmp_path / "pipe.yaml"
    disk = tmp_path / "disk"
    disk.mkdir()
    pipe.write_text(yaml.safe_dump({"out_dir": str(disk / "p"), "runs": [
        {"name": "teacher", "config": {**BASE, "model": "cnn_small"}},
        {"name": "student", "config": {**BASE, "model": "cnn_tiny", "method": "kd"}, "teacher": {"from": "teacher"}},
        {"name": "onnx", "export": {"from": "student", "format": "onnx"}}]}))
    if not _mount(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert kdkit(tmp_path, "pipeline", pipe).returncode == 0
        need = sum(f.stat().st_size for f in (disk / "p").rglob("*") if f.is_file())
        subprocess.run(["umount", str(disk)], check=True)
        for fraction in (0.3, 0.6, 0.9):
            assert _mount(disk, f"{int(need * fraction) // 4096 * 4}k")
            p = kdkit(tmp_path, "pipeline", pipe)
            err = [line for line in p.stderr.splitlines() if line.startswith("kdkit: error:")]
            assert p.returncode == 6 and len(err) == 1 and "is the disk full?" in err[0], (fraction, p.stderr[-3000:])
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            p = kdkit(tmp_path, "pipeline", pipe)
            assert p.returncode == 0, p.stderr[-3000:]
            assert (disk / "p" / "onnx" / "model.onnx").is_file()
            subprocess.run(["umount", str(disk)], check=True)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
