"""Distillation without the training data (`kdkit synthesize`, DeepInversion, Yin et al. 2020): the priors
against their definitions at a realistic size, images synthesised from a digits teacher alone match its
batch-norm statistics far better than the noise they start from, a student distilled on them alone is far
above chance on the real test split, and the bad inputs get one-line errors."""

import json

import pytest
import torch
import yaml
from torch import nn

from kdkit.cli import main as cli
from kdkit.data.synthetic import read_train_file
from kdkit.synthesize import BatchNormPrior, total_variation


def test_the_priors_are_their_definitions():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    by_hand = sum(torch.sqrt(((a - b) ** 2).sum()) for a, b in (
        (x[..., :, :-1], x[..., :, 1:]), (x[..., :-1, :], x[..., 1:, :]), (x[..., 1:, :-1], x[..., :-1, 1:]),
        (x[..., :-1, :-1], x[..., 1:, 1:])))
    torch.testing.assert_close(total_variation(x), by_hand)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -0.2, 0.1]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    prior = BatchNormPrior(nn.Sequential(bn))
    prior.layers[0](x)
    mean = x.mean((0, 2, 3))
    var = ((x - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    expected = torch.linalg.norm(bn.running_var - var) + torch.linalg.norm(bn.running_mean - mean)
    torch.testing.assert_close(prior.loss(), expected)
    assert prior.terms == []  # read once per forward pass
    prior.close()


def test_a_student_learns_from_images_synthesised_from_the_teacher_alone(tmp_path, teacher_ckpt, capsys):
    out = tmp_path / "synth.safetensors"
    assert cli(["synthesize", teacher_ckpt, "--images", "100", "--batch", "50", "--iterations", "200",
                "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    images, labels, meta = read_train_file(out)
    assert images.shape == (100, 1, 8, 8) and r["images"] == 100 and meta["dataset"] == "digits"
    assert torch.equal(torch.bincount(labels), torch.full((10,), 10))
    from kdkit.synthesize import synthesize

    again = synthesize(teacher_ckpt, images=20, batch=20, iterations=200)
    assert all(kept < 0.2 * start for start, kept in zip(again["feature_prior_start"], again["feature_prior_kept"]))
    cfg = {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
           "method": {"name": "kd", "alpha": 1.0, "temperature": 4.0},
           "data": {"name": "digits", "train_file": str(out), "val_fraction": 0.0, "batch_size": 25},
           "optim": {"lr": 0.05}, "train": {"epochs": 10, "progress": False, "seed": 0}}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["distill", str(tmp_path / "kd.yaml"), "--out", str(tmp_path / "s")]) == 0
    final = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test/top1"] > 40.0  # 10 classes: chance is 10%; no real training image was seen


def test_bad_synthesize_inputs(tmp_path, teacher_ckpt, capsys):
    from kdkit import from_config
    from kdkit.config import load_config

    cfg = load_config(base={"model": "mlp", "data": {"name": "digits"},
                            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "m"}})
    from_config(cfg, log=lambda m: None).fit()
    assert cli(["synthesize", str(tmp_path / "m" / "checkpoint.pt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no batch-norm layers" in err and len(err.splitlines()) == 1
    assert cli(["synthesize", teacher_ckpt, "--images", "0", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "images and batch must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("flag", ["--lr", "--feature"])
def test_negative_settings_are_refused(tmp_path, teacher_ckpt, capsys, flag):
    assert cli(["synthesize", teacher_ckpt, flag, "-1", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "lr > 0 and the prior weights >= 0" in capsys.readouterr().err
