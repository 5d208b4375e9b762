"""Cross-modal distillation (issue 31): paired inputs, each network told which one it takes (model.input),
the cross_modal method (Gupta et al. 2016), and the paired Fashion-MNIST + edge-map dataset, end to end."""

import contextlib
import io
import json

import pytest
import torch
import yaml
from conftest import small_fashion_mnist

from kdkit import create_method, create_model
from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.features import input_of
from kdkit.methods import Distiller


def test_a_network_takes_the_input_it_is_told_and_refuses_one_that_is_not_there():
    torch.manual_seed(0)
    net = input_of(create_model("cnn_tiny", num_classes=10, in_channels=1).eval(), "edges")
    g = torch.Generator().manual_seed(0)
    image, edges = torch.rand(64, 1, 28, 28, generator=g), (torch.rand(64, 1, 28, 28, generator=g) > 0.8).float()
    with torch.no_grad():
        alone = net(edges)  # one input given alone (an exported network's) passes as it is
        assert torch.equal(net(image=image, edges=edges), alone)
        assert not torch.equal(net(image=image, edges=edges), net(image))
        with pytest.raises(ConfigError, match="'edges' is not one of the batch's inputs"):
            net(image=image, depth=edges)
        second = input_of(create_model("cnn_tiny", num_classes=10, in_channels=1).eval(), 1)
        assert torch.equal(second(image, edges), second(edges))


def _pair(student_input, teacher_input, **kw):
    torch.manual_seed(0)
    student = input_of(create_model("cnn_tiny", num_classes=10, in_channels=1), student_input)
    teacher = input_of(create_model("cnn_small", num_classes=10, in_channels=1), teacher_input)
    shape = {"image": torch.rand(2, 1, 28, 28), "edges": torch.rand(2, 1, 28, 28)}
    method = create_method("cross_modal", **kw)
    return Distiller(student, [method], [teacher], input_shape=shape), method


def test_cross_modal_regresses_the_teachers_features_of_the_other_modality():
    d, m = _pair("edges", "image", kd_weight=0.5)
    assert m.student_specs == ["stage3"] and m.teacher_specs == ["stage3"]
    g = torch.Generator().manual_seed(1)
    x = {"image": torch.rand(64, 1, 28, 28, generator=g),
         "edges": (torch.rand(64, 1, 28, 28, generator=g) > 0.8).float()}
    y = torch.randint(0, 10, (64,), generator=g)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        terms = d(x, y, epoch=0)
        losses.append(float(terms["transfer"].detach()))
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    assert set(terms) == {"ce", "transfer", "kd"} and losses[-1] < losses[0]
    with torch.no_grad():  # the teacher saw the images, the student the edge maps
        t_feats = {}
        hook = d.teachers[0].stage3.register_forward_hook(lambda mod, i, o: t_feats.setdefault("t", o))
        d.teachers[0](x["image"])
        hook.remove()
        s_feat = d.student.stage3(d.student.stage2(d.student.stage1(x["edges"])))
        expected = torch.nn.functional.mse_loss(m.regressor(s_feat), t_feats["t"])
        assert float(d(x, y, epoch=0)["transfer"]) == pytest.approx(float(expected), rel=1e-5)


def test_cross_modal_refuses_networks_that_take_the_same_input_and_empty_weights():
    with pytest.raises(ConfigError, match="must take different inputs.*they take image and image"):
        _pair("image", "image")
    with pytest.raises(ConfigError, match="nothing is transferred"):
        create_method("cross_modal", feature_weight=0.0)


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """The first 2,500 training and 1,000 test images of the real Fashion-MNIST in their own IDX files (the
    edge maps of the whole set take a minute to compute, and each test starts with an empty cache)."""
    return small_fashion_mnist(tmp_path_factory.mktemp("fmnist"), 2500, 1000)


def test_cross_modal_end_to_end_on_fashion_mnist_and_its_edge_maps(tmp_path, fashion_root):
    data = {"name": "fashion_mnist_edges", "root": str(fashion_root), "download": False, "verify": False,
            "batch_size": 64, "limit_train": 2000, "val_fraction": 0.2}
    train = {"epochs": 1, "out_dir": str(tmp_path), "progress": False}
    optim = {"name": "adamw", "lr": 0.003, "weight_decay": 0.0}
    teacher = _write(tmp_path / "t.yaml", {"model": {"name": "cnn_small", "input": "image"}, "data": data,
                                           "optim": optim, "train": {**train, "run_name": "t"}})
    assert cli(["train", teacher]) == 0
    ckpt = str(tmp_path / "t" / "checkpoint.pt")
    student = _write(tmp_path / "s.yaml", {
        "model": {"name": "cnn_tiny", "input": "edges"}, "teacher": {"name": "cnn_small", "checkpoint": ckpt,
                                                                     "input": "image"},
        "method": {"name": "cross_modal", "kd_weight": 1.0}, "data": data, "optim": optim,
        "train": {**train, "run_name": "s"}})
    assert cli(["distill", student]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/transfer"] > 0 and rows[0]["train/kd"] > 0 and rows[-1]["test/top1"] > 30
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the student, rebuilt from its checkpoint, still takes the edge maps
        assert cli(["eval", str(tmp_path / "s" / "checkpoint.pt"), "--json"]) == 0
    assert json.loads(out.getvalue())["top1"] == pytest.approx(rows[-1]["test/top1"])
    assert cli(["export", str(tmp_path / "s" / "checkpoint.pt"), "--out", str(tmp_path / "s.onnx")]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"))
    assert [i.shape[1:] for i in session.get_inputs()] == [[1, 28, 28]]  # its own modality alone
    # bad input: an input named on a dataset with one input per sample; a network told nothing (both on the
    # same modality: test_cross_modal_refuses_networks_that_take_the_same_input_and_empty_weights)
    err = io.StringIO()
    one = _write(tmp_path / "one.yaml", {**yaml.safe_load(open(student)), "data": {"name": "digits"}})
    with contextlib.redirect_stderr(err):  # a cross-modal recipe on a dataset with one input per sample
        assert cli(["distill", one]) == 2
    assert "gives one input per sample" in err.getvalue() and err.getvalue().count("\n") == 1
    blind = _write(tmp_path / "blind.yaml", {**yaml.safe_load(open(student)), "model": "cnn_tiny"})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # a network told nothing gets every input: its forward refuses them
        assert cli(["distill", blind]) == 2
    assert "model.input names the one" in err.getvalue() and err.getvalue().count("\n") == 1
