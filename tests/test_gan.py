"""Image-to-image translation and GAN compression: the fashion_edges data, the generator and PatchGAN, the
image-quality metrics (FID and KID against direct computations), the gan and gan_compression methods
(the distillation term against GAN Compression's formula), resuming, the report and export."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FASHION, small_fashion_mnist

from kdkit import from_config
from kdkit.config import DataConfig, load_config
from kdkit.errors import ConfigError


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A small Fashion-MNIST in its own IDX files: the first 192 training and 64 test images of the real set."""
    return small_fashion_mnist(tmp_path_factory.mktemp("fmnist"), 192, 64)


def _cfg(tmp_path, root, **over):
    base = {"task": "image_to_image", "model": {"name": "resnet_generator", "kwargs": {"ngf": 4, "n_blocks": 3}},
            "method": {"name": "gan", "discriminator_kwargs": {"ndf": 8, "n_layers": 2}},
            "data": {"name": "fashion_edges", "root": str(root), "download": False, "verify": False,
                     "batch_size": 16, "eval_batch_size": 64, "limit_train": 64},
            "optim": {"name": "adamw", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "run",
                      "balance_factor": 1000.0}}  # L1 x 100 outweighs the GAN term by design (pix2pix)
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


# ------------------------------------------------------------------------------------------------ metrics


def test_fid_equals_a_direct_computation():
    """Means, covariances and the matrix square root (scipy's sqrtm) of fixed features give our FID."""
    from scipy import linalg

    from kdkit.tasks.image_quality import fid

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g, dtype=torch.float64)
    fake = 0.8 * torch.randn(250, 16, generator=g, dtype=torch.float64) + 0.3
    r, f = real.numpy(), fake.numpy()
    mu_r, mu_f, s_r, s_f = r.mean(0), f.mean(0), np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    direct = ((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * linalg.sqrtm(s_r @ s_f).real)
    assert fid(real, fake) == pytest.approx(direct, rel=1e-6)
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6) and direct > 1.0


def test_kid_equals_the_unbiased_mmd_with_the_cubic_kernel():
    """One subset of every sample: KID is the unbiased MMD^2 of the whole sets, k(x, y) = (x.y / d + 1)^3."""
    from kdkit.tasks.image_quality import kid

    g = torch.Generator().manual_seed(1)
    real = torch.randn(120, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(120, 8, generator=g, dtype=torch.float64) + 0.5
    d, m = real.shape[1], len(real)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(real, real), k(fake, fake), k(real, fake)
    direct = ((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * kxy.mean()
    assert kid(real, fake, subsets=1, subset_size=m) == pytest.approx(float(direct), rel=1e-6)
    assert kid(real, fake, subsets=20, subset_size=50) == kid(real, fake, subsets=20, subset_size=50)


def test_psnr_and_ssim_per_image():
    from kdkit.tasks.image_quality import psnr, ssim

    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 1, 28, 28, generator=g)
    b = (a + 0.1 * torch.randn(4, 1, 28, 28, generator=g)).clamp(0, 1)
    mse = (a - b).square().flatten(1).mean(1)
    assert torch.allclose(psnr(b, a), 10 * torch.log10(1 / mse))
    assert torch.equal(psnr(a, a), torch.full((4,), 100.0))
    s = ssim(b, a)
    assert s.shape == (4,) and (s < 1).all() and torch.allclose(ssim(a, a), torch.ones(4))


def test_task_options_are_checked():
    from kdkit.tasks import create_task

    assert create_task({"name": "image_to_image"}).primary == "l1"
    task = create_task({"name": "image_to_image", "feature_network": "x.pt", "feature_name": "fmnist"})
    assert task.primary == "fid_fmnist" and not task.higher_is_better
    with pytest.raises(ConfigError, match="unknown option.*it takes feature_network"):
        create_task({"name": "image_to_image", "features": "x.pt"})
    with pytest.raises(ConfigError, match="feature_name"):
        create_task({"name": "image_to_image", "feature_network": "x.pt", "feature_name": "FID-FMNIST"})
    with pytest.raises(ConfigError, match="task classification: unknown option"):
        load_config(base={"model": "cnn_tiny", "task": {"name": "classification", "x": 1}})


# --------------------------------------------------------------------------------------------------- data


def test_hysteresis_gives_kornias_canny():
    import kornia

    from kdkit.data.edges import HIGH, KERNEL, LOW, SIGMA, canny
    from kdkit.data.idx import read_idx_file

    images = torch.from_numpy(read_idx_file(FASHION / "t10k-images-idx3-ubyte.gz")[:96].copy()).unsqueeze(1)
    _, expected = kornia.filters.canny(images.float() / 255, LOW, HIGH, (KERNEL, KERNEL), (SIGMA, SIGMA))
    edges = canny(images, chunk=40)
    assert torch.equal(edges, (expected * 255).to(torch.uint8)) and edges.float().mean() > 10


def test_fashion_edges_pairs_each_garment_with_its_edges(fashion_root, tmp_path, monkeypatch):
    from kdkit.data import load_dataset
    from kdkit.data.sources import cache_dir

    ds = load_dataset(DataConfig(name="fashion_edges", root=str(fashion_root), download=False, verify=False))
    assert len(ds.train) == 192 and len(ds.test) == 64 and ds.num_classes == 1 and ds.image_size == (28, 28)
    assert ds.train.labels.dtype == torch.uint8 and ds.train.labels.shape == (192, 28, 28)
    assert set(ds.train.images.unique().tolist()) == {0, 255}
    on = ds.test.images[:, 0] > 0  # an edge lies on the garment or right beside it, never far into the black
    near = F.max_pool2d(ds.test.labels.float().unsqueeze(1), 5, 1, 2)[:, 0] > 0
    assert (near[on]).all()
    files = sorted((cache_dir() / "fashion_edges").glob("*.npy"))
    assert len(files) == 2
    again = load_dataset(DataConfig(name="fashion_edges", root=str(fashion_root), download=False, verify=False))
    assert torch.equal(again.train.images, ds.train.images)
    files[0].write_bytes(b"damaged")  # a damaged cache file is computed again, not trusted
    third = load_dataset(DataConfig(name="fashion_edges", root=str(fashion_root), download=False, verify=False))
    assert torch.equal(third.train.images, ds.train.images) and torch.equal(third.test.images, ds.test.images)


# ------------------------------------------------------------------------------------------------ methods


def test_generator_and_discriminator_shapes():
    from kdkit import create_model

    g = create_model("resnet_generator", num_classes=1, in_channels=1, ngf=8, n_blocks=9)
    y = g(torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 1, 28, 28) and y.abs().max() <= 1
    assert g.mapping_layers() == ["down2", "blocks.2", "blocks.5", "blocks.8"]
    # GAN Compression's model.9 (the ReLU after the second downsampling) is the end of our down2
    flat = [m for part in (g.stem, g.down1, g.down2) for m in part]
    assert isinstance(flat[9], torch.nn.ReLU) and flat[9] is g.down2[-1]
    d = create_model("patchgan", in_channels=2, ndf=8, n_layers=2)
    assert d(torch.randn(2, 2, 28, 28)).shape == (2, 1, 5, 5)
    with pytest.raises(RuntimeError, match="multiples of 4"):
        g(torch.randn(1, 1, 30, 30))


def _reference_distill(netAs, mapping_layers, s_acts, t_acts):
    """GAN Compression's ``ResnetDistiller.calc_distill_loss`` (one device): for each mapping layer, the MSE
    of its 1x1 convolution of the student's activation against the teacher's, summed over layers."""
    losses = []
    for netA, n in zip(netAs, mapping_layers):
        losses.append(F.mse_loss(netA(s_acts[n]), t_acts[n]))
    return sum(losses)


def test_gan_compression_distillation_matches_the_authors_formula():
    from kdkit import create_method, create_model
    from kdkit.methods import Distiller
    from kdkit.tasks import create_task

    torch.manual_seed(0)
    student = create_model("resnet_generator", num_classes=1, in_channels=1, ngf=4, n_blocks=6)
    teacher = create_model("resnet_generator", num_classes=1, in_channels=1, ngf=8, n_blocks=6)
    method = create_method("gan_compression", discriminator_kwargs={"ndf": 8, "n_layers": 2})
    d = Distiller(student, [method], [teacher], input_shape=(1, 28, 28), task=create_task("image_to_image"))
    assert method.student_specs == method.teacher_specs == ["down2", "blocks.2", "blocks.5"]
    x = torch.randn(64, 1, 28, 28)
    acts: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k, n=n: acts[k].__setitem__(n, o))
             for k, net in (("s", student), ("t", teacher)) for n, m in net.named_modules()
             if n in method.student_specs]
    student(x), teacher(x)
    for h in hooks:
        h.remove()
    ours = method.distill_loss(acts["s"], acts["t"]).detach()
    theirs = _reference_distill(list(method.adapters), method.student_specs, acts["s"], acts["t"]).detach()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6) and float(ours) > 0
    assert all(a.in_channels == 16 and a.out_channels == 32 and a.kernel_size == (1, 1) for a in method.adapters)
    assert d is not None


def test_adversary_adam_is_torch_adam():
    from kdkit.methods.adversary import Adversary

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3))
    b = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3))
    b.load_state_dict(a.state_dict())
    adversary = Adversary(a, 2e-4, betas=(0.5, 0.999))
    opt = torch.optim.Adam(b.parameters(), 2e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(4):
        x = torch.randn(64, 2, 32, 32)
        losses.append(adversary.update(lambda x=x: a(x).square().mean()))
        opt.zero_grad()
        b(x).square().mean().backward()
        opt.step()
    assert all(torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(a.parameters(), b.parameters()))
    assert int(adversary.steps) == 4 and not any(p.requires_grad for p in a.parameters())
    # what the trainer logs once an epoch: the mean of the updates' losses since the last call, then a fresh count
    assert adversary.mean_loss().item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-6)
    assert adversary.mean_loss() is None


@pytest.mark.parametrize("mode", ["hinge", "lsgan", "vanilla"])
def test_gan_losses(mode):
    from kdkit.methods.gan import gan_loss

    high, low = torch.full((4, 1, 5, 5), 1.0), torch.full((4, 1, 5, 5), 0.0)
    # the discriminator is content when real scores high and fake low; the generator when fake scores high
    assert gan_loss(high, True, mode, True) < gan_loss(low, True, mode, True)
    assert gan_loss(low, False, mode, True) < gan_loss(high, False, mode, True)
    assert gan_loss(high, True, mode, False) < gan_loss(low, True, mode, False)
    if mode == "hinge":
        assert float(gan_loss(high, True, mode, True)) == 0.0 and float(gan_loss(high, True, mode, False)) == -1.0


# ------------------------------------------------------------------------------------------- end to end


def test_bad_networks_are_refused_before_training(tmp_path, fashion_root):
    patch = {"name": "patchgan", "kwargs": {}}
    with pytest.raises(ConfigError, match=r"gives images of shape \[1, 1, 1\].*needs images \[batch, 1, 28, 28\]"):
        from_config(load_config(base=_cfg(tmp_path, fashion_root, model=patch, method="vanilla")), log=lambda m: None)
    with pytest.raises(ConfigError, match=r"gan: the generator gives images \[1, 1, 1\] from inputs \[1, 28, 28\]"):
        from_config(load_config(base=_cfg(tmp_path, fashion_root, model=patch)), log=lambda m: None)
    bad = {"name": "gan", "discriminator_kwargs": {"ndf": 8, "n_layers": 2, "in_channels": 3}}
    with pytest.raises(ConfigError) as e:
        from_config(load_config(base=_cfg(tmp_path, fashion_root, method=bad)), log=lambda m: None)
    assert "cannot score what it is fed, 2 channels at 28x28 (1 of the input + 1 of the image)" in str(e.value)
    assert "\n" not in str(e.value)
    missing = {"name": "image_to_image", "feature_network": str(tmp_path / "none.pt"), "feature_name": "fmnist"}
    with pytest.raises(ConfigError, match="feature_network.*is not a file"):
        from_config(load_config(base=_cfg(tmp_path, fashion_root, task=missing)), log=lambda m: None)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def gan_teacher(tmp_path_factory, fashion_root):
    """A resnet_generator ngf 8 trained one epoch with gan: the checkpoint holds its discriminator too."""
    out = tmp_path_factory.mktemp("teacher")
    from_config(load_config(base=_cfg(out, fashion_root, model={"name": "resnet_generator", "kwargs": {
        "ngf": 8, "n_blocks": 3}})), log=lambda m: None).fit()
    return str(out / "run/checkpoint.pt")


def test_the_discriminator_starts_from_the_teachers(tmp_path, fashion_root, gan_teacher):
    """discriminator_checkpoint (GAN Compression's restore_D_path): the teacher run's discriminator weights;
    one of another shape, or a run without one, is refused in one line before training."""
    from kdkit.engine.checkpoint import load_checkpoint
    from kdkit.errors import CheckpointError

    teacher = {"name": "resnet_generator", "kwargs": {"ngf": 8, "n_blocks": 3}, "checkpoint": gan_teacher}
    method = {"name": "gan_compression", "discriminator_kwargs": {"ndf": 8, "n_layers": 2},
              "discriminator_checkpoint": gan_teacher}
    trainer = from_config(load_config(base=_cfg(tmp_path, fashion_root, teacher=teacher, method=method)),
                          log=lambda m: None)
    saved = {k[len("methods.0.discriminator.net."):]: v for k, v in load_checkpoint(gan_teacher)["distiller"].items()
             if k.startswith("methods.0.discriminator.net.")}
    ours = trainer.distiller.methods[0].discriminator.net.state_dict()
    assert saved and ours.keys() == saved.keys() and all(torch.equal(ours[k], saved[k]) for k in saved)
    wider = {**method, "discriminator_kwargs": {"ndf": 16, "n_layers": 2}}
    with pytest.raises(CheckpointError, match="does not fit patchgan") as e:
        from_config(load_config(base=_cfg(tmp_path, fashion_root, teacher=teacher, method=wider)), log=lambda m: None)
    assert "\n" not in str(e.value)
    plain = tmp_path / "plain"
    from_config(load_config(base=_cfg(plain, fashion_root, method="vanilla")), log=lambda m: None).fit()
    no_d = {**method, "discriminator_checkpoint": str(plain / "run/checkpoint.pt")}
    with pytest.raises(ConfigError, match="holds no discriminator"):
        from_config(load_config(base=_cfg(tmp_path, fashion_root, teacher=teacher, method=no_d)), log=lambda m: None)


def test_gan_compression_killed_and_resumed_is_bit_identical(tmp_path, fashion_root, gan_teacher):
    """The generator's and the discriminator's alternating updates (each its own Adam) resume bit for bit."""
    from conftest import killed_and_resumed

    from kdkit.engine.checkpoint import load_checkpoint

    teacher = {"name": "resnet_generator", "kwargs": {"ngf": 8, "n_blocks": 3}, "checkpoint": gan_teacher}
    cfg = _cfg(tmp_path, fashion_root, teacher=teacher, train={"epochs": 2},
               method={"name": "gan_compression", "discriminator_kwargs": {"ndf": 8, "n_layers": 2}})
    del cfg["train"]["out_dir"], cfg["train"]["run_name"]
    killed_and_resumed(cfg, tmp_path / "runs")
    # each epoch logs the discriminator's mean loss beside the generator's terms, the same after the resume
    logged = [[json.loads(line).get("train/gan_compression/discriminator_loss")
               for line in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()[:2]]
              for run in ("full", "cut")]
    assert logged[0] == logged[1] and all(v is not None and 0 <= v < 10 for v in logged[0]), logged
    state = load_checkpoint(tmp_path / "runs/full/checkpoint.pt")["distiller"]
    # 64 training images (data.limit_train), batches of 16: 4 steps an epoch
    assert int(state["methods.0.discriminator.steps"]) == 2 * 4
    assert any(k.startswith("methods.0.discriminator.square") for k in state)
    assert any(k.startswith("methods.0.adapters.") for k in state)


def test_end_to_end_with_fid_report_export_and_profile(tmp_path, fashion_root):
    """A feature network trained on the small Fashion-MNIST; a gan run measured through it: FID and KID
    chosen on and recorded with the network's SHA-256; the report's image grid; ONNX export; profile."""
    from PIL import Image

    from kdkit.engine.checkpoint import load_checkpoint
    from kdkit.export import export_network, profile
    from kdkit.report import collect, write_report

    classifier = {"model": "cnn_tiny", "data": {"name": "fashion_mnist", "root": str(fashion_root), "download": False,
                                                "verify": False},
                  "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "c"), "run_name": "run"}}
    from_config(load_config(base=classifier), log=lambda m: None).fit()
    features = str(tmp_path / "c/run/checkpoint.pt")
    task = {"name": "image_to_image", "feature_network": features, "feature_name": "fmnist", "kid_subset_size": 16}
    result = from_config(load_config(base=_cfg(tmp_path / "g", fashion_root, task=task, train={"epochs": 2})),
                         log=lambda m: None).fit()
    for key in ("test/fid_fmnist", "test/kid_fmnist", "test/psnr", "test/ssim", "test/l1", "val/fid_fmnist"):
        assert key in result and np.isfinite(result[key]), key
    assert result["test/fid_fmnist"] > 0 and 0 < result["test/psnr"] < 100 and -1 < result["test/ssim"] < 1
    ckpt = tmp_path / "g/run/best.pt"
    record = load_checkpoint(ckpt)["model"]  # the student's model record
    assert record["feature_network"]["sha256"] == __import__("hashlib").sha256(Path(features).read_bytes()).hexdigest()
    written = write_report(collect([tmp_path / "g"]), tmp_path / "report")
    md = written["report.md"].read_text()
    assert "fid\\_fmnist" in md and "images.png" in md
    with Image.open(written["images.png"]) as im:
        assert im.size[0] > 2 * 150  # columns: input, target, student
    check = export_network(ckpt, None, "onnx", tmp_path / "g.onnx")
    assert check["metric"] == "fid_fmnist" and check["max_abs_diff"] < 1e-3
    assert check["onnx_fid_fmnist"] == pytest.approx(check["torch_fid_fmnist"], rel=1e-3)
    p = profile(ckpt, batches=(1,), runs=2, onnx=False)
    assert p["test_metric"] == "fid_fmnist" and p["macs"] > 0
