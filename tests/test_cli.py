"""The command line, and every bad input of the issue: one-line error, non-zero exit, nothing lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdkit import list_methods
from kdkit.cli import main


def write_cfg(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def base_cfg(tmp_path, **over):
    data = {"model": "cnn_tiny", "data": {"name": "digits"},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "runs")}}
    data.update(over)
    return data


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("kdkit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_train_eval_and_distill(tmp_path, capsys, teacher_ckpt):
    cfg = write_cfg(tmp_path / "s.yaml", base_cfg(tmp_path))
    code, out, _ = run(capsys, "train", cfg, "--out", str(tmp_path / "r1"), "--set", "train.epochs=2")
    assert code == 0 and json.loads(out.splitlines()[-1])["epoch"] == 2
    code, out, _ = run(capsys, "eval", str(tmp_path / "r1" / "checkpoint.pt"), "--json")
    assert code == 0 and 0 <= json.loads(out)["top1"] <= 100
    kd = write_cfg(tmp_path / "kd.yaml", base_cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                                                 method=[{"name": "kd"}, {"name": "at"}]))
    code, out, _ = run(capsys, "distill", kd, "--out", str(tmp_path / "r2"), "--set", "method.kd.temperature=2")
    assert code == 0 and "test/agreement" in json.loads(out.splitlines()[-1])
    assert yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())["method"][0]["temperature"] == 2.0


def test_resume_from_cli(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "s.yaml", base_cfg(tmp_path))
    assert run(capsys, "train", cfg, "--out", str(tmp_path / "r"))[0] == 0
    code, out, _ = run(capsys, "train", "--resume", str(tmp_path / "r"))  # already finished: evaluates only
    assert code == 0 and json.loads(out.splitlines()[-1])["epoch"] == 1


def test_misspelled_key_and_method(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, optim={"learning_rate": 0.1}))
    code, _, err = run(capsys, "train", cfg)
    assert code == 2 and "unknown key 'optim.learning_rate'" in one_line_error(err)
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, method="kdd", teacher="cnn_small"))
    code, _, err = run(capsys, "distill", cfg)
    assert code == 2 and "unknown method 'kdd'; did you mean 'kd'" in one_line_error(err)
    code, _, err = run(capsys, "train", cfg, "--set", "train.epochz=3")
    assert code == 2 and "did you mean 'epochs'" in one_line_error(err)


def test_teacher_checkpoint_mismatch(tmp_path, capsys, teacher_ckpt):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, method="kd",
                                                  teacher={"name": "cnn_medium", "checkpoint": teacher_ckpt}))
    code, _, err = run(capsys, "distill", cfg)
    assert code == 4 and "holds a 'cnn_small' model, but the config asks for 'cnn_medium'" in one_line_error(err)


def test_teacher_class_count_mismatch(tmp_path, capsys, teacher_ckpt):
    # the same digits teacher used on a 3-class folder dataset
    from PIL import Image

    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=i * 40).save(tmp_path / "imgs" / c / f"{i}.png")
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(
        tmp_path, method="kd", teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
        data={"name": "folder", "root": str(tmp_path / "imgs"), "image_size": 8}))
    code, _, err = run(capsys, "distill", cfg)
    assert code == 4 and "trained for 10 classes, the dataset has 3" in one_line_error(err)


def test_bad_layer_path(tmp_path, capsys, teacher_ckpt):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(
        tmp_path, method={"name": "fitnets", "student_layer": "stage9"},
        teacher={"name": "cnn_small", "checkpoint": teacher_ckpt}))
    code, _, err = run(capsys, "distill", cfg)
    assert code == 2 and "stage9" in one_line_error(err)
    code, _, err = run(capsys, "inspect", "resnet8", "--input-shape", "3,32")
    assert code == 2 and "C,H,W" in one_line_error(err)


def test_dataset_missing_truncated_checksum(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, data={"name": "mnist", "root": str(tmp_path / "none"),
                                                                   "download": False}))
    code, _, err = run(capsys, "train", cfg)
    assert code == 3 and "dataset 'mnist' not found" in one_line_error(err)
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    import numpy as np

    from kdkit.data.cifar import write_batch

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(folder / name, np.zeros((4, 3, 32, 32)), [0, 1, 2, 3])
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "c10"),
                                                                   "download": False}))
    code, _, err = run(capsys, "train", cfg)
    assert code == 3 and "fails its checksum" in one_line_error(err)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:100])
    code, _, err = run(capsys, "train", cfg, "--set", "data.verify=false")
    assert code == 3 and "truncated or corrupt" in one_line_error(err)


def test_not_a_kdkit_checkpoint(tmp_path, capsys):
    import torch

    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    code, _, err = run(capsys, "eval", str(tmp_path / "x.pt"))
    assert code == 4 and "not a kdkit checkpoint" in one_line_error(err)
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, method="kd",
                                                  teacher={"name": "cnn_small", "checkpoint": str(tmp_path / "x.pt")}))
    code, _, err = run(capsys, "distill", cfg)  # a teacher may be a plain state dict, but an empty one is not
    assert code == 4 and "neither a kdkit checkpoint nor a state dict" in one_line_error(err)


def test_nan_loss_exit_code_and_term_named(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, optim={"lr": 1.0e30, "momentum": 0.0},
                                                  train={"epochs": 2, "progress": False}))
    code, _, err = run(capsys, "train", cfg, "--out", str(tmp_path / "r"))
    assert code == 5 and "became" in one_line_error(err) and "'ce'" in err


def test_teacher_and_command_mismatch(tmp_path, capsys, teacher_ckpt):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path))
    code, _, err = run(capsys, "distill", cfg)
    assert code == 2 and "needs a teacher" in one_line_error(err)


def test_inspect_and_list(capsys):
    code, out, _ = run(capsys, "inspect", "resnet20", "--input-shape", "3,32,32")
    assert code == 0 and "layer3.2.conv2" in out and "64x8x8" in out and "272," in out
    code, out, _ = run(capsys, "list", "models", "resnet*")
    assert code == 0 and "resnet32x4" in out and "vgg8" not in out
    code, out, _ = run(capsys, "list", "datasets")
    assert code == 0 and all(n in out for n in ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "folder"))
    code, out, _ = run(capsys, "list", "methods")
    assert code == 0 and "Hinton" in out and "fitnets" in out


def test_module_entry_point_exit_code(tmp_path):
    cfg = write_cfg(tmp_path / "c.yaml", base_cfg(tmp_path, train={"epohcs": 1}))
    p = subprocess.run([sys.executable, "-m", "kdkit", "train", cfg], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith(f"kdkit: error: {cfg}: unknown key 'train.epohcs'")
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method", [m for m in list_methods(task="classification")
                                    if m != "cross_modal"])  # paired inputs: tests/test_cross_modal.py
def test_every_method_one_epoch_on_digits_from_cli(tmp_path, capsys, teacher_ckpt, method):
    """Every registered method trains for one epoch through `kdkit distill` (or `train` for vanilla)."""
    from kdkit.methods import METHODS

    needs = METHODS.get(method).needs_teacher
    data = base_cfg(tmp_path, method=method)
    cls = METHODS.get(method)
    if cls.needs_peers:
        data["peers"] = [data["model"]] * cls.needs_peers
    if cls.needs_views:  # digits neither crops nor flips: cutout makes the views differ
        data["data"] = {**data["data"], "views": 1 + cls.needs_peers, "cutout": 2}
    if cls.student_transform:
        model = data["model"] if isinstance(data["model"], dict) else {"name": data["model"]}
        data["model"] = {**model, "transforms": [dict(cls.student_transform)]}
    if needs:
        data["teacher"] = {"name": "cnn_small", "checkpoint": teacher_ckpt}
    cfg = write_cfg(tmp_path / "c.yaml", data)
    staged = METHODS.get(method)().pretrain_epochs > 0  # preliminary stages capped at one epoch here
    extra = ["--set", "method.stage1_epochs=1"] if staged else []
    if method == "ard":  # its attack's steps: 10 extra passes a step by default, 2 suffice here
        extra += ["--set", "method.steps=2"]
    code, out, err = run(capsys, "distill" if needs else "train", cfg, "--out", str(tmp_path / "r"), *extra)
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["epoch"] == 1 + int(staged)
    assert all(v == v for v in result.values() if isinstance(v, float))  # no NaN anywhere
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
