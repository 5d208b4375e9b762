"""Several inputs per sample through kdkit's own pipeline: a loader of ``({"ids": ..., "mask": ...}, y)`` or
``((ids, mask), y)`` batches read by ``dataset_from_loaders`` (each input in its own dtype), trained with
KD + FitNets by ``kdkit.from_config`` (the model called with keywords or positionally), evaluated, its
teacher cached, exported to ONNX with one named input per tensor and checked against PyTorch, counted
and timed as ``kdkit profile`` does, and quantised to int8 with the same feeds."""

import math

import pytest
import torch
from torch import nn

import kdkit
from kdkit.batch import example, onnx_feed
from kdkit.data.tensors import dataset_from_loaders
from kdkit.errors import ConfigError
from kdkit.export import count_macs, export_onnx, onnx_parity
from kdkit.measure import measure_network

VOCAB, LENGTH = 50, 12


def _tokens(n, seed):
    """Sequences of token ids, zero-padded past a random length; the class is which of three token ranges
    is most frequent among the real tokens."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    noise = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    signal = 1 + 16 * y[:, None] + torch.randint(0, 16, (n, LENGTH), generator=g)
    ids = torch.where(torch.rand(n, LENGTH, generator=g) < 0.6, signal, noise) * mask
    return ids, mask, y


def _batches(form, n, seed, batch=64):
    ids, mask, y = _tokens(n, seed)
    out = []
    for i in range(0, n, batch):
        s = slice(i, i + batch)
        inputs = {"ids": ids[s], "mask": mask[s]} if form == "dict" else (ids[s], mask[s])
        out.append((inputs, y[s]))
    return out


class Bag(nn.Module):
    """Token embeddings averaged over the mask, then an MLP: ``forward(ids, mask)``."""

    def __init__(self, num_classes=3, in_channels=LENGTH, width=32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).float()
        pooled = (self.embed(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.fc(self.body(pooled))


for name, width in (("multi_input_teacher", 64), ("multi_input_student", 16)):
    if name not in kdkit.list_models():
        kdkit.register_model(name)(lambda num_classes=3, in_channels=LENGTH, width=width: Bag(num_classes,
                                                                                             in_channels, width))


def _recipe(tmp_path, run, **extra):
    return kdkit.load_config(base={"model": "multi_input_student", "data": {"name": "tokens", "batch_size": 64},
                                   "optim": {"name": "adamw", "lr": 1e-2}, **extra,
                                   "train": {"epochs": 4, "progress": False, "out_dir": str(tmp_path),
                                             "run_name": run}})


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_several_inputs_train_distil_evaluate_export_and_profile(tmp_path, form):
    ds = dataset_from_loaders(_batches(form, 1200, 0), _batches(form, 400, 1), name="tokens")
    ids, mask, _ = _tokens(1200, 0)
    stored = ds.train.images
    first, second = (stored["ids"], stored["mask"]) if form == "dict" else stored
    assert ds.kind == "tensor" and first.dtype == torch.int64 and torch.equal(first, ids) and torch.equal(second, mask)
    teacher = kdkit.from_config(_recipe(tmp_path, "teacher", model="multi_input_teacher"), dataset=ds,
                                log=lambda m: None)
    x, _, _ = next(iter(teacher.loaders.test))
    assert isinstance(x, dict if form == "dict" else tuple) and kdkit.batch.tensors(x)[0].dtype == torch.int64
    t = teacher.fit()
    assert t["test/top1"] > 80  # learnt from the ids through the mask
    ckpt = str(tmp_path / "teacher" / "checkpoint.pt")
    hint = {"name": "fitnets", "student_layer": "body.2", "teacher_layer": "body.2", "beta": 1.0}
    recipe = _recipe(tmp_path, "kd", teacher={"name": "multi_input_teacher", "checkpoint": ckpt},
                     method=["kd", hint])
    student = kdkit.from_config(recipe, dataset=ds, log=lambda m: None)
    s = student.fit()
    assert s["test/top1"] > 70 and 0 < s["test/agreement"] <= 100
    net = student.distiller.student
    assert kdkit.evaluate(net, student.loaders.test)["top1"] == pytest.approx(s["test/top1"])
    # ONNX: one input per tensor, named by the dict's keys (or input0, input1), a dynamic batch
    path = export_onnx(net, ds.input_shape, tmp_path / "student.onnx")
    parity = onnx_parity(net, path, student.loaders.test)
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 100.0
    assert parity["images"] == 400
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == (["ids", "mask"] if form == "dict" else ["input0", "input1"])
    macs = count_macs(net, ds.input_shape)
    assert macs > 0
    row = measure_network(net, ds.input_shape, [1, 8], 3, tmp_path, "m")
    assert row["macs"] == macs and math.isfinite(row["ort_b8_ms"]) and math.isfinite(row["eager_b8_ms"])
    feed = onnx_feed(example(ds.input_shape, 3))
    assert sorted(feed) == sorted(names) and all(v.shape == (3, LENGTH) for v in feed.values())


def test_a_cached_teacher_serves_several_inputs(tmp_path):
    ds = dataset_from_loaders(_batches("dict", 600, 0), _batches("dict", 200, 1), name="tokens")
    kdkit.from_config(_recipe(tmp_path, "teacher", model="multi_input_teacher"), dataset=ds, log=lambda m: None).fit()
    ckpt = str(tmp_path / "teacher" / "checkpoint.pt")
    results = []
    for run, cache in (("live", None), ("cached", {"store": "memory"})):
        cfg = _recipe(tmp_path, run, teacher={"name": "multi_input_teacher", "checkpoint": ckpt}, method="kd")
        if cache:
            cfg = kdkit.load_config(base={**kdkit.config.config_dict(cfg), "train": {
                **kdkit.config.config_dict(cfg)["train"], "teacher_cache": cache}})
        results.append(kdkit.from_config(cfg, dataset=ds, log=lambda m: None).fit())
    assert results[0]["test/top1"] == results[1]["test/top1"]  # the cache serves the same teacher outputs


def test_several_inputs_of_mixed_forms_are_refused():
    good = _batches("dict", 128, 0)
    bad = [({"ids": good[0][0]["ids"]}, good[0][1]), *good[1:]]  # a batch without the mask
    with pytest.raises(ConfigError, match="several shapes or dtypes"):
        dataset_from_loaders(good + bad, good, name="tokens")
    short = [({"ids": good[0][0]["ids"], "mask": good[0][0]["mask"][:10]}, good[0][1])]
    with pytest.raises(ConfigError, match="different numbers of samples"):
        dataset_from_loaders(short, good, name="tokens")
    nested = [({"ids": (good[0][0]["ids"],), "mask": good[0][0]["mask"]}, good[0][1])]
    with pytest.raises(ConfigError, match="flat tuple or dict of tensors"):
        dataset_from_loaders(nested, good, name="tokens")


def test_a_gathered_tasks_onnx_check_feeds_the_input_its_network_takes(tmp_path):
    """onnx_parity on a task whose evaluation gathers records (image-to-image here) with batches of several
    inputs and a network that takes one of them (``model.input``): ONNX Runtime gets that input alone, and
    its metric equals PyTorch's."""
    from kdkit.batch import Batch
    from kdkit.export import own_input_shape
    from kdkit.features import input_of
    from kdkit.tasks import create_task

    torch.manual_seed(0)
    net = input_of(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).eval(),
                   "image")
    shapes = {"image": torch.zeros(1, 1, 16, 16), "edges": torch.zeros(1, 2, 16, 16)}
    path = export_onnx(net, own_input_shape(net, shapes), tmp_path / "g.onnx")
    g = torch.Generator().manual_seed(1)
    loader = [Batch({"image": torch.rand(64, 1, 16, 16, generator=g), "edges": torch.rand(64, 2, 16, 16, generator=g)},
                    torch.randint(0, 256, (64, 16, 16), generator=g, dtype=torch.uint8), torch.arange(64) + 64 * i)
              for i in range(3)]
    parity = onnx_parity(net, path, loader, create_task("image_to_image"))
    assert parity["metric"] == "l1" and parity["images"] == 3 * 64 and parity["max_abs_diff"] < 1e-5
    assert parity["onnx_l1"] == pytest.approx(parity["torch_l1"], rel=1e-6) and parity["torch_l1"] > 0
