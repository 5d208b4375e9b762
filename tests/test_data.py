import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.config import DataConfig
from kdkit.data import build_loaders, load_dataset, split_train_val
from kdkit.data.cifar import read_batch, write_batch
from kdkit.data.idx import parse_idx, write_idx
from kdkit.data.loader import random_crop, random_flip
from kdkit.errors import DatasetError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_digits():
    ds = load_dataset(DataConfig(name="digits"))
    assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == 359
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (1, 8, 8)
    assert set(ds.train.labels.tolist()) == set(range(10))


def test_split_is_deterministic_and_disjoint():
    ds = load_dataset(DataConfig(name="digits"))
    a_train, a_val = split_train_val(ds.train, 0.1, seed=3)
    b_train, b_val = split_train_val(ds.train, 0.1, seed=3)
    _, c_val = split_train_val(ds.train, 0.1, seed=4)
    assert torch.equal(a_val.images, b_val.images) and not torch.equal(a_val.images, c_val.images)
    assert len(a_train) + len(a_val) == len(ds.train)
    rows = {tuple(x.flatten().tolist()) for x in a_train.images}
    assert sum(tuple(x.flatten().tolist()) in rows for x in a_val.images) < len(a_val) // 10  # duplicates only


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_debian_files():
    ds = load_dataset(DataConfig(name="fashion_mnist", download=False))
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    mean = ds.train.images.float().mean().item() / 255
    assert mean == pytest.approx(ds.mean[0], abs=0.005)


def _write_mnist(root: Path, n_train=30, n_test=10, compress=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_written_by_test(tmp_path, compress):
    _write_mnist(tmp_path / "mnist", compress=compress)
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False, verify=False))
    assert len(ds.train) == 30 and len(ds.test) == 10 and ds.train.labels[:3].tolist() == [0, 1, 2]
    raw = (tmp_path / "mnist" / ("t10k-images-idx3-ubyte" + (".gz" if compress else ""))).read_bytes()
    raw = gzip.decompress(raw) if compress else raw
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(parse_idx(raw).copy()))


def test_idx_checksum_failure_and_truncation(tmp_path):
    _write_mnist(tmp_path / "mnist")
    with pytest.raises(DatasetError, match="fails its checksum"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False, verify=True))
    f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False, verify=False))
    f.write_bytes(f.read_bytes()[:50])  # a cut gzip stream
    with pytest.raises(DatasetError, match="truncated or corrupt gzip"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False, verify=False))


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset 'mnist' not found.*train-images-idx3-ubyte.gz.*Download"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))


def test_download_verifies_checksum_atomically(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_mnist(mirror)
    monkeypatch.setenv("KDKIT_MIRROR", mirror.as_uri())
    with pytest.raises(DatasetError, match="fails its checksum"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "empty"), download=True))
    cache = Path(__import__("os").environ["XDG_CACHE_HOME"]) / "kdkit" / "mnist"
    assert not any(cache.glob("*")) if cache.exists() else True  # nothing half-written left behind
    # with the right checksums the download lands in the cache and loads
    from kdkit.data import idx

    md5 = {p.name[:-3]: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.glob("*.gz")}
    monkeypatch.setitem(idx.SOURCES["mnist"], "md5", md5)
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "empty"), download=True))
    assert len(ds.train) == 30 and len(list(cache.glob("*.gz"))) == 4


def test_offline_download_error(tmp_path):
    with pytest.raises(DatasetError, match="could not download"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=True))


def _write_cifar(folder: Path, name="cifar10", n=20):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    if name == "cifar10":
        for i in range(1, 6):
            write_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (n, 3, 32, 32)), [j % 10 for j in range(n)])
        write_batch(folder / "test_batch", rng.integers(0, 256, (n, 3, 32, 32)), [j % 10 for j in range(n)])
    else:
        for split in ("train", "test"):
            write_batch(folder / split, rng.integers(0, 256, (n, 3, 32, 32)), [j % 100 for j in range(n)],
                        label_key="fine_labels")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_files_written_by_test(tmp_path, name, folder):
    _write_cifar(tmp_path / folder, name)
    ds = load_dataset(DataConfig(name=name, root=str(tmp_path), download=False, verify=False))
    assert ds.train.images.shape == ((100 if name == "cifar10" else 20), 3, 32, 32)
    assert len(ds.test) == 20 and ds.num_classes == (10 if name == "cifar10" else 100)
    first = read_batch(tmp_path / folder / ("test_batch" if name == "cifar10" else "test"))
    assert torch.equal(ds.test.images.reshape(20, -1), torch.from_numpy(first["data"]))


def test_cifar_checksum_and_corrupt_and_unsafe_pickle(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetError, match="fails its checksum"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, verify=True))
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="not a valid CIFAR batch"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, verify=False))
    import pickle

    f.write_bytes(pickle.dumps({"data": shutil.rmtree}))  # a pickle that names an arbitrary global
    with pytest.raises(DatasetError, match="refusing to load global shutil"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, verify=False))


def test_cifar_archive_is_extracted(tmp_path):
    import tarfile

    _write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    shutil.rmtree(tmp_path / "src")
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, verify=False))
    assert len(ds.train) == 100


def test_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.0)
    loaders = build_loaders(cfg, seed=0)
    assert loaders.dataset.classes == ["cat", "dog", "eel"] and loaders.dataset.in_channels == 3
    batches = list(loaders.train)
    assert len(batches) == 4 and batches[0][0].shape == (4, 3, 16, 16)
    seen = torch.cat([b[2] for b in batches]).tolist()  # 18 images, drop_last: 16 distinct indices
    assert len(set(seen)) == 16 and set(seen) <= set(range(18))
    (tmp_path / "train" / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot read image"):
        list(build_loaders(cfg, seed=0).train)


def test_loader_is_seeded_and_resumable():
    cfg = DataConfig(name="digits", batch_size=32)
    a = build_loaders(cfg, seed=5).train
    b = build_loaders(cfg, seed=5).train
    first = [x for x, _, _ in a]
    assert all(torch.equal(x, y) for x, (y, _, _) in zip(first, b))
    state = a.state_dict()
    nxt = [x for x, _, _ in a]
    a.load_state_dict(state)
    assert all(torch.equal(x, y) for x, (y, _, _) in zip(nxt, a))


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    y = random_crop(x, 1, g)
    assert y.shape == x.shape
    for i in range(2):  # every crop is a 4x4 window of the zero-padded image
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        assert any(torch.equal(padded[:, r:r + 4, c:c + 4], y[i]) for r in range(3) for c in range(3))
    flipped = random_flip(x.repeat(32, 1, 1, 1), torch.Generator().manual_seed(1))
    n_flipped = sum(torch.equal(f, x[i % 2].flip(2)) for i, f in enumerate(flipped))
    assert 0 < n_flipped < 64
