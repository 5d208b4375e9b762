"""Inputs of any shape and feature methods on any layer: vectors ``[B, D]`` kept in their own dtype (never
quantised to 8 bits), float images kept as floats, feature methods on ``[B, D]`` and ``[B, N, D]`` layers
(FitNets, RKD, PKT, SP, CC, CRD), AT and NST refusing them with a reason, and the tabular example run as
written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_S
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdkit
from kdkit.data.tensors import dataset_from_loaders
from kdkit.errors import ConfigError
from kdkit.features import probe
from kdkit.methods import create_method
from kdkit.methods.distiller import Distiller

ROOT = Path(__file__).resolve().parents[1]


def _vectors(n=512, d=20, k=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 2 * y[:, None].double()  # well outside [0, 1]
    return x.to(dtype), y


def _loaders(x, y, cut=400):
    return (DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=64),
            DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=64))


class MLP(nn.Module):
    def __init__(self, num_classes=3, in_channels=20, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


class Tokens(nn.Module):
    """A small transformer on ``[B, N, D]`` inputs: hidden states ``[B, N, width]`` at ``encoder.layers.<i>``."""

    def __init__(self, num_classes=3, in_channels=6, dim=5, width=16, depth=2):
        super().__init__()
        self.embed = nn.Linear(dim, width)
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x)).mean(1))


def test_vectors_are_stored_in_their_own_dtype_and_fed_unchanged(tmp_path):
    x, y = _vectors(dtype=torch.float64)
    ds = dataset_from_loaders(*_loaders(x, y), name="vec")
    assert ds.kind == "tensor" and ds.input_shape == (20,) and ds.train.images.dtype == torch.float64
    assert torch.equal(ds.train.images, x[:400])  # nothing rounded, clipped or rescaled
    if "any_input_mlp" not in kdkit.list_models():
        kdkit.register_model("any_input_mlp")(MLP)
    recipe = {"model": "any_input_mlp", "data": {"name": "vec", "batch_size": 64},
              "optim": {"name": "adamw", "lr": 1e-2},
              "train": {"epochs": 10, "progress": False, "out_dir": str(tmp_path)}}
    cfg = kdkit.load_config(base=recipe)
    trainer = kdkit.from_config(cfg, dataset=ds, log=lambda m: None)
    batch = next(iter(trainer.loaders.test))
    assert batch[0].dtype == torch.float32  # as stored, no normalisation:
    assert torch.equal(batch[0], x[400:400 + len(batch[0])].float())
    result = trainer.fit()
    assert result["test/top1"] > 60  # separable classes: learnt from the unquantised values
    with pytest.raises(ConfigError, match="data.cutout: vec holds tensor inputs \\[20\\], not images"):
        kdkit.from_config(kdkit.load_config(base={**recipe, "data": {"name": "vec", "cutout": 4}}), dataset=ds)


def test_float_images_are_not_quantised_and_out_of_range_floats_point_to_tensor_inputs():
    x = torch.rand(128, 1, 1, 20, dtype=torch.float64)
    y = torch.randint(0, 2, (128,))
    ds = dataset_from_loaders([(x, y)], [(x, y)])
    assert ds.kind == "image" and torch.equal(ds.train.images, x)  # was stored as uint8 (error up to 1/510)
    with pytest.raises(ConfigError, match="float images must be in \\[0, 1\\].*kind='tensor'"):
        dataset_from_loaders([(x * 4 - 2, y)], [(x, y)])
    ds = dataset_from_loaders([(x * 4 - 2, y)], [(x, y)], kind="tensor")
    assert ds.kind == "tensor" and ds.input_shape == (1, 1, 20)
    with pytest.raises(ConfigError, match="crop_padding and flip augment images"):
        dataset_from_loaders([(x, y)], [(x, y)], kind="tensor", flip=True)
    with pytest.raises(ConfigError, match="non-finite"):
        dataset_from_loaders([(torch.full((2, 3), float("nan")), y[:2])], [(x, y)])


def test_a_generator_loader_keeps_its_first_batch_and_float_images_feed_both_pipelines_alike():
    from kdkit.data import BatchLoader
    from kdkit.data.reference import DataLoaderPipeline

    x, y = torch.rand(96, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (96,))
    batches = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32))  # iterable once
    ds = dataset_from_loaders(batches, [(x, y)])
    assert ds.kind == "image" and torch.equal(ds.train.images, x)  # all three batches, the first included
    common = {"mean": ds.mean, "std": ds.std}
    memory = next(iter(BatchLoader(ds.train, 96, **common)))[0]
    reference = next(iter(DataLoaderPipeline(ds.train, 96, num_workers=0, **common)))[0]
    torch.testing.assert_close(reference, memory)  # float images are not divided by 255 in either
    torch.testing.assert_close(memory.mean().double(), torch.tensor(0.0, dtype=torch.float64), atol=1e-5, rtol=0)


def _distiller(student, teacher, method, shape, **cfg):
    m = create_method(method, **cfg)
    return Distiller(student, [m], [teacher], input_shape=shape, num_samples=256)


@pytest.mark.parametrize("method,cfg", [
    ("fitnets", {"student_layer": "net.2", "teacher_layer": "net.2"}),
    ("fitnets", {}),  # default: the penultimate features of a network without spatial maps
    ("rkd", {}), ("pkt", {}), ("cc", {}), ("crd", {"negatives": 128}),
    ("sp", {"student_layers": ["net.2"], "teacher_layers": ["net.2"]}),
    ("sp", {}),
])
def test_feature_methods_on_vector_layers(method, cfg):
    torch.manual_seed(0)
    student, teacher = MLP(width=16), MLP(width=64).eval()
    d = _distiller(student, teacher, method, (20,), **cfg)
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))  # batch 128: a realistic size
    terms = d(x, y, torch.arange(128))
    extra = {k: v for k, v in terms.items() if k != "ce"}
    assert extra and all(torch.isfinite(v) and v.requires_grad for v in extra.values())
    sum(extra.values()).backward()
    assert student.net[0].weight.grad.abs().sum() > 0  # the term reaches the student


@pytest.mark.parametrize("method,cfg", [
    ("fitnets", {"student_layer": "encoder.layers.0", "teacher_layer": "encoder.layers.1"}),
    ("rkd", {"student_layer": "encoder.layers.1", "teacher_layer": "encoder.layers.1"}),
    ("pkt", {"student_layer": "encoder.layers.1", "teacher_layer": "encoder.layers.0"}),
    ("cc", {"student_layer": "encoder.layers.1", "teacher_layer": "encoder.layers.1"}),
    ("crd", {"student_layer": "encoder.layers.1", "teacher_layer": "encoder.layers.1", "negatives": 128}),
    ("sp", {"student_layers": ["encoder.layers.0", "encoder.layers.1"],
            "teacher_layers": ["encoder.layers.0", "encoder.layers.1"]}),
])
def test_feature_methods_on_sequence_layers(method, cfg):
    torch.manual_seed(0)
    student, teacher = Tokens(width=8), Tokens(width=32).eval()
    d = _distiller(student, teacher, method, (6, 5), **cfg)
    x, y = torch.randn(64, 6, 5), torch.randint(0, 3, (64,))
    terms = d(x, y, torch.arange(64))
    extra = sum(v for k, v in terms.items() if k != "ce")
    assert torch.isfinite(extra)
    extra.backward()
    assert student.embed.weight.grad.abs().sum() > 0
    if method == "fitnets":  # hidden states [B, N, 8] -> [B, N, 32]: one linear map per position
        assert isinstance(d.methods[0].regressor, nn.Module) and d.methods[0].regressor.fc.weight.shape == (32, 8)


@pytest.mark.parametrize("method", ["at", "nst"])
def test_attention_and_selectivity_refuse_layers_without_maps(method):
    with pytest.raises(ConfigError, match=f"{method} needs \\[C, H, W\\] feature maps \\(.+\\); the student's "
                                          "'net.2' gives \\[16\\] per sample"):
        _distiller(MLP(width=16), MLP(width=64), method, (20,), student_layers=["net.2"], teacher_layers=["net.2"])
    with pytest.raises(ConfigError, match=f"{method} needs \\[C, H, W\\] feature maps"):  # the default layers too
        _distiller(MLP(width=16), MLP(width=64), method, (20,))


def test_probing_a_sequence_model_lists_its_hidden_states():
    info = probe(Tokens(), (6, 5))
    assert info.shape("encoder.layers.0") == (6, 16) and info.stages() == []


def test_the_tabular_example_runs_as_written(tmp_path):
    """examples/tabular.py: MLP teacher and student on standardised [N, 20] features, KD + FitNets on
    explicit linear layers (shortened: fewer samples and epochs)."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tabular.py"), "--out", str(tmp_path / "runs"),
                           "--epochs", "8", "--samples", "2000"], capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["teacher"] > 40 and summary["student_kd_fitnets"] > 30  # 4 classes: chance is 25
    assert summary["hint"] is not None and summary["hint"] > 0
    ckpt = kdkit.engine.checkpoint.load_checkpoint(tmp_path / "runs" / "student_kd_fitnets" / "checkpoint.pt")
    assert ckpt["inference"]["input_shape"] == [20]


# ----------------------------------------------------------------------------- the batch protocol


class TwoInputs(nn.Module):
    """``forward(image, extra)``: an image branch and a vector branch joined before the classifier."""

    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.vec = nn.Linear(4, width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, image, extra):
        return self.fc(torch.cat([self.conv(image), self.vec(extra)], 1))


def _two_input_batches(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    image, extra, y = torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,))
    return image, extra, y


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_tuple_and_dict_inputs_reach_forward_positionally_or_by_keyword(form):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    image, extra, y = _two_input_batches()
    inputs = (image, extra) if form == "tuple" else {"image": image, "extra": extra}
    loader = [(inputs, y)]  # one batch of a user's loader: (inputs, targets)
    with torch.no_grad():
        expected = (model(image, extra).argmax(1) == y).float().mean().item() * 100
    assert kdkit.evaluate(model, loader)["top1"] == pytest.approx(expected)
    # the distiller, with a feature method on the joined layer, in a user's own loop
    teacher = TwoInputs(width=16).eval()
    d = Distiller(TwoInputs(), [create_method("kd"), create_method("rkd", student_layer="fc:input",
                                                                    teacher_layer="fc:input")],
                  [teacher], input_shape=inputs)  # the example batch stands in for a shape
    terms = d(inputs, y)
    assert set(terms) == {"ce", "kd", "rkd_distance", "rkd_angle"}
    sum(terms.values()).backward()


def test_a_flat_three_tuple_batch_is_refused_with_the_protocol():
    image, extra, y = _two_input_batches()
    with pytest.raises(ConfigError, match=r"got a 3-tuple: a batch is \(inputs, targets\).*\(\(x1, x2\), y\)"):
        kdkit.evaluate(TwoInputs(), [(image, extra, y)])
