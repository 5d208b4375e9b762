"""Dataset distillation (`kdkit condense`, distribution matching, Zhao & Bilen 2023) and training on a
synthetic training file (`data.train_file`): on digits, the matching loss on held-out networks falls, zero
iterations give a random real subset exactly, the same seed gives the same images, a network trains on the file and is
tested on the real test split, and the bad inputs get one-line errors."""

import json

import pytest
import torch
import yaml

from kdkit.cli import main as cli
from kdkit.condense import condense
from kdkit.data.synthetic import read_train_file, write_train_file
from kdkit.data.tensors import load_tensors


@pytest.fixture(scope="module")
def condensed(tmp_path_factory):
    out = tmp_path_factory.mktemp("condense") / "digits_ipc2.safetensors"
    return out, condense("digits", ipc=2, iterations=100, model="cnn_small", lr=0.003, batch_real=64, seed=0, out=out)


def test_distribution_matching_lowers_its_loss_and_writes_the_file(condensed):
    out, r = condensed
    # the objective measured on networks and real batches never used for an update falls
    assert len(r["curve"]) == 100 and r["held_out_after"] < 0.95 * r["held_out_before"], r
    images, labels, meta = read_train_file(out)
    assert images.shape == (20, 1, 8, 8) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 2))
    assert meta["dataset"] == "digits" and meta["ipc"] == "2" and meta["iterations"] == "100"
    a, b = (condense("digits", ipc=2, iterations=5, batch_real=16, seed=3)["images"] for _ in range(2))
    assert torch.equal(a, b)  # the same seed, the same images


def test_zero_iterations_is_a_random_real_subset():
    (x, y), _ = load_tensors("digits")
    r = condense("digits", ipc=3, iterations=0, seed=1)
    assert r["curve"] == [] and len(r["labels"]) == 30
    for img, label in zip(r["images"], r["labels"]):
        match = (x - img).abs().flatten(1).amax(1) < 1e-6
        assert match.any() and int(y[match][0]) == int(label)


def test_a_network_trains_on_the_file_and_is_tested_on_the_real_test_split(condensed, tmp_path, capsys):
    out, _ = condensed
    cfg = {"model": "cnn_tiny", "data": {"name": "digits", "train_file": str(out), "val_fraction": 0.0,
                                          "batch_size": 10},
           "optim": {"lr": 0.01}, "train": {"epochs": 3, "progress": False, "seed": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 0
    final = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and 0.0 <= final["test/top1"] <= 100.0
    from kdkit.engine.rebuild import network_and_data

    _, loaders = network_and_data(tmp_path / "r" / "checkpoint.pt", None, "cpu")
    _, (x_test, _) = load_tensors("digits")
    assert len(loaders.train.data) == 20 and len(loaders.test.data) == len(x_test)


def _bad_file(tmp_path, images, labels, meta=None):
    path = tmp_path / "bad.safetensors"
    write_train_file(path, images, labels, meta or {"dataset": "digits"})
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda t: str(t / "missing.safetensors"), "does not exist"),
    (lambda t: _bad_file(t, torch.rand(4, 3, 8, 8), torch.zeros(4)), "needs [N, 1, 8, 8]"),
    (lambda t: _bad_file(t, torch.rand(4, 1, 8, 8) * 2, torch.zeros(4)), "uint8 or floats in [0, 1]"),
    (lambda t: _bad_file(t, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 10])), "digits has 10 classes"),
    (lambda t: _bad_file(t, torch.rand(4, 1, 8, 8), torch.zeros(4), {"dataset": "mnist"}), "made for mnist"),
])
def test_bad_train_files_are_refused_in_one_line(tmp_path, capsys, make, message):
    cfg = {"model": "cnn_tiny", "data": {"name": "digits", "train_file": make(tmp_path), "val_fraction": 0.0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_bad_condense_arguments(tmp_path, capsys):
    assert cli(["condense", "--data", "digits", "--ipc", "0", "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ipc (images per class) must be an integer >= 1" in err and len(err.splitlines()) == 1
    assert cli(["condense", "--data", "digits", "--ipc", "500", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "fewer than 500 training images" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_gradient_matching_distance_and_loops():
    from kdkit.condense import _gradient_distance, loops

    g = torch.randn(6, 3, 3, 3)
    bias = torch.randn(6)
    assert float(_gradient_distance((g, bias), (2.5 * g, -bias))) == pytest.approx(0.0, abs=1e-5)  # biases left out
    assert float(_gradient_distance((g,), (-g,))) == pytest.approx(12.0, abs=1e-4)  # 6 output units, 1 - (-1) each
    a, b = torch.zeros(2, 4), torch.zeros(2, 4)
    a[0, 0] = b[0, 1] = a[1, 2] = b[1, 2] = 1.0  # unit 0 orthogonal, unit 1 parallel
    assert float(_gradient_distance((a,), (b,))) == pytest.approx(1.0, abs=1e-5)
    assert [loops(i) for i in (1, 2, 10, 20, 50, 100)] == [(1, 1), (2, 50), (10, 50), (20, 25), (50, 10), (50, 10)]


def test_gradient_matching_moves_the_images_by_its_loops(tmp_path):
    out = tmp_path / "gm.safetensors"
    start = condense("digits", ipc=2, iterations=0, seed=0)["images"]
    r = condense("digits", ipc=2, iterations=1, batch_real=16, seed=0, method="gm", out=out)
    assert len(r["curve"]) == 2  # outer = 2 image updates per iteration (a fresh network each), 50 inner steps
    assert all(v > 0 for v in r["curve"]) and r["held_out_before"] > 0
    assert not torch.equal(r["images"], start) and 0.0 <= float(r["images"].min()) <= float(r["images"].max()) <= 1.0
    images, labels, meta = read_train_file(out)
    assert meta["method"] == "gm" and meta["lr"] == "0.1" and meta["model"] == "convnet"  # the papers' defaults
    assert torch.equal(labels, r["labels"])
    again = condense("digits", ipc=2, iterations=1, batch_real=16, seed=0, method="gm")["images"]
    assert torch.equal(again, r["images"])


def test_an_unknown_condense_method_is_refused(tmp_path, capsys):
    assert cli(["condense", "--data", "digits", "--method", "kip", "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "method must be one of dm, gm" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()


def test_the_matched_images_gradient_is_exact():
    """The pixels' gradient of the gradient-matching distance (a double backward through instance norms) agrees
    with central finite differences in float64."""
    from torch import nn

    from kdkit.condense import _gradient_distance, _instance_norm
    from kdkit.models import create_model

    torch.manual_seed(0)
    net = _instance_norm(create_model("cnn_tiny", num_classes=10, in_channels=1)).double().eval()
    weights = list(net.parameters())
    y = torch.full((16,), 3)
    target = torch.autograd.grad(nn.functional.cross_entropy(net(torch.randn(16, 1, 16, 16).double()), y), weights)

    def distance(s, graph):
        grads = torch.autograd.grad(nn.functional.cross_entropy(net(s), y[:2]), weights, create_graph=graph)
        return _gradient_distance(target, grads)

    s = torch.randn(2, 1, 16, 16, dtype=torch.double, requires_grad=True)
    grad = torch.autograd.grad(distance(s, True), [s])[0]
    for i in [(0, 0, 7, 8), (1, 0, 3, 12)]:
        up, down = s.detach().clone(), s.detach().clone()
        up[i] += 1e-6
        down[i] -= 1e-6
        fd = (distance(up.requires_grad_(True), False) - distance(down.requires_grad_(True), False)) / 2e-6
        assert float(grad[i]) != 0.0 and float(fd) == pytest.approx(float(grad[i]), rel=1e-4, abs=1e-7)


def test_the_papers_convnet_and_its_embedding():
    """convnet (Zhao et al.'s ConvNet) is built for the dataset's image side, and distribution matching embeds
    with its flattened last map (the input of its linear layer), as the papers do; a global pooling network
    embeds with the map before its pooling."""
    from kdkit.condense import _embedder, _takes_input_size
    from kdkit.models import create_model

    net = create_model("convnet", num_classes=10, in_channels=1, input_size=28)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10) and _takes_input_size("convnet")
    assert _embedder(net)(torch.randn(3, 1, 28, 28)).shape == (3, 128 * 3 * 3)
    small = create_model("cnn_small", num_classes=10, in_channels=1)
    assert not _takes_input_size("cnn_small") and _embedder(small)(torch.randn(3, 1, 28, 28)).shape == (3, 64 * 7 * 7)
    with pytest.raises(ValueError, match="input_size must be an integer in \\[8, "):
        create_model("convnet", input_size=4)
