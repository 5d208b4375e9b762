"""Real torchvision and timm models (installed by `make setup`, docs/models.md): by name in a YAML recipe and
from Python, as teacher and student, through ``kdkit inspect``, distill, eval, export and prune; a 1-channel
dataset meets a 3-channel stem (rebuilt for the data; released 3-channel weights summed onto it)."""

import json

import pytest
import timm
import torch
import torchvision
import yaml

import kdkit
from kdkit.cli import main as cli
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import ConfigError

DATA = {"name": "digits", "limit_train": 256, "batch_size": 64}
TRAIN = {"epochs": 1, "progress": False, "seed": 0}


def _yaml(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_the_pinned_libraries_import():
    assert torchvision.__version__.startswith("0.29.1") and timm.__version__ == "1.0.31"


def test_torchvision_teacher_and_student_through_the_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    teacher = _yaml(tmp_path / "t.yaml", {"model": "torchvision:resnet18", "data": DATA,
                                          "train": {**TRAIN, "out_dir": str(runs), "run_name": "teacher"}})
    assert cli(["train", teacher]) == 0
    t_ckpt = str(runs / "teacher" / "checkpoint.pt")
    assert load_checkpoint(t_ckpt)["model"]["name"] == "torchvision:resnet18"

    capsys.readouterr()
    assert cli(["inspect", "torchvision:mobilenet_v3_small", "--input-shape", "1,8,8"]) == 0
    out = capsys.readouterr().out
    assert "features.0.0" in out and "classifier.3" in out

    student = _yaml(tmp_path / "s.yaml", {
        "model": "torchvision:mobilenet_v3_small",
        "teacher": {"name": "torchvision:resnet18", "checkpoint": t_ckpt},
        "method": {"name": "kd", "temperature": 4.0}, "data": DATA,
        "train": {**TRAIN, "out_dir": str(runs), "run_name": "student"}})
    assert cli(["distill", student]) == 0
    trained = _last_json(capsys.readouterr().out)
    s_ckpt = str(runs / "student" / "checkpoint.pt")
    assert cli(["eval", s_ckpt, "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["top1"] == pytest.approx(trained["test/top1"], abs=1e-3)
    assert cli(["export", s_ckpt, "--out", str(tmp_path / "s.onnx")]) == 0  # checked against ONNX Runtime
    assert (tmp_path / "s.onnx").stat().st_size > 0

    pruned = _yaml(tmp_path / "p.yaml", {
        "model": {"name": "torchvision:resnet18", "checkpoint": t_ckpt,
                  "transforms": [{"name": "prune", "ratio": 0.5}]},
        "teacher": {"name": "torchvision:resnet18", "checkpoint": t_ckpt}, "method": "kd", "data": DATA,
        "train": {**TRAIN, "out_dir": str(runs), "run_name": "pruned"}})
    assert cli(["distill", pruned]) == 0
    capsys.readouterr()
    p_ckpt = runs / "pruned" / "checkpoint.pt"
    layers = load_checkpoint(p_ckpt)["model"]["transforms"][0]["structure"]["layers"]
    assert layers["conv1"]["out_channels"] < 64
    assert cli(["eval", str(p_ckpt), "--json"]) == 0  # the pruned structure is rebuilt from the record
    assert 0 <= _last_json(capsys.readouterr().out)["top1"] <= 100


def test_timm_student_from_python(tmp_path):
    cfg = kdkit.load_config(base={"model": "timm:test_resnet", "teacher": "torchvision:mobilenet_v3_small",
                                  "method": "kd", "data": DATA, "train": {**TRAIN, "out_dir": str(tmp_path)}})
    # a teacher without weights is refused unless asked for: give it some
    torch.save(kdkit.create_model("torchvision:mobilenet_v3_small", num_classes=10, in_channels=1).state_dict(),
               tmp_path / "t.pt")
    cfg.teacher[0].checkpoint = str(tmp_path / "t.pt")
    trainer = kdkit.from_config(cfg, run_dir=tmp_path / "r", log=lambda m: None)
    result = trainer.fit()
    assert 0 <= result["test/top1"] <= 100
    assert type(trainer.distiller.student).__module__.startswith("timm.")
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]["name"] == "timm:test_resnet"


def test_a_grey_dataset_gets_a_rebuilt_stem_and_colour_weights_summed_onto_it(tmp_path):
    """Both decisions of docs/models.md: the stem is rebuilt for 1 channel, and a 3-channel state dict
    loads into it summed over input channels: exactly the colour network on the grey image repeated."""
    torch.manual_seed(0)
    colour = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(colour.state_dict(), tmp_path / "rgb.pt")
    spec = kdkit.config.ModelSpec(name="torchvision:resnet18", checkpoint=str(tmp_path / "rgb.pt"))
    from kdkit.engine.rebuild import build_model

    grey = build_model(spec, num_classes=10, in_channels=1).eval()
    assert grey.conv1.in_channels == 1
    x = torch.rand(64, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), colour(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,kwargs,message", [
    ("torchvision:resnet19", {}, "Unknown model resnet19; did you mean 'resnet18'"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "argument(s) weights refused"),
    ("torchvision:resnet18", {"weights_backbone": "x"}, "argument(s) weights_backbone refused"),
    ("timm:test_resnet", {"pretrained": True}, "argument(s) pretrained refused"),
    ("timm:no_such_net", {}, "Unknown model (no_such_net)"),
])
def test_library_names_refuse_hubs_and_unknown_models(name, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kdkit.create_model(name, num_classes=10, in_channels=1, **kwargs)
