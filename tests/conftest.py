import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.config import load_config

# `make test` runs the suite in parallel (pytest-xdist, one worker per core up to 4): each worker keeps to
# its share of the cores, so that the workers' torch threads do not contend
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# A guard against a hung subprocess, never a speed limit: the slowest command a test runs takes a few
# minutes on a 2-core machine loaded by a second test suite; a hang is caught after half an hour.
HANG_S = 1800

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def small_fashion_mnist(folder: Path, train: int, test: int) -> Path:
    """The first ``train`` training and ``test`` test images of the real Fashion-MNIST written in their own IDX
    files under ``folder/fashion_mnist``; returns ``folder`` (a ``data.root``)."""
    from kdkit.data.idx import read_idx_file, write_idx

    root = folder / "fashion_mnist"
    root.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            array = read_idx_file(FASHION / f"{prefix}-{kind}.gz")[:n]
            write_idx(root / f"{prefix}-{kind}", np.ascontiguousarray(array), compress=True)
    return folder


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    """No test reads the user's cache or data folders, or reaches the network."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("KDKIT_DATA", raising=False)
    monkeypatch.setenv("KDKIT_MIRROR", "file:///nonexistent-kdkit-mirror")
    torch.manual_seed(0)


def _digits_cfg(tmp_path, **over):
    """A fast digits config; ``over`` maps top-level sections to dicts merged in."""
    base = {"model": "cnn_tiny", "data": {"name": "digits"},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "run"},
            "optim": {"lr": 0.05}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return load_config(base=base)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """A cnn_small teacher trained for 2 epochs on digits (session-wide, about a second)."""
    from kdkit import from_config

    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(base={"model": "cnn_small", "data": {"name": "digits"},
                            "train": {"epochs": 2, "progress": False, "out_dir": str(out), "run_name": "t"}})
    from_config(cfg, log=lambda m: None).fit()
    return str(out / "t" / "checkpoint.pt")


@pytest.fixture
def digits_cfg():
    """Factory of fast digits configs: ``digits_cfg(out_dir, train={"epochs": 3}, method="kd")``."""
    return _digits_cfg


def killed_and_resumed(cfg: dict, tmp_path) -> dict:
    """Train ``cfg`` uninterrupted in ``tmp_path/full``, and again in ``tmp_path/cut`` stopped after its
    first epoch and resumed; assert both end with the same weights bit for bit; the full run's result."""
    from kdkit import from_config, resume
    from kdkit.engine.checkpoint import load_checkpoint

    result = from_config(load_config(base=cfg), run_dir=tmp_path / "full", log=lambda m: None).fit()

    def stop(trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        from_config(load_config(base=cfg), run_dir=tmp_path / "cut", log=lambda m: None, callbacks=[stop]).fit()
    resume(tmp_path / "cut", log=lambda m: None).fit()
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["distiller"] for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return result


def _rank_worker(rank: int, world: int, port: int, cfg: dict, run_dir: str, out: str) -> None:
    import json
    import os
    from pathlib import Path

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from kdkit import distributed, from_config

    try:
        trainer = from_config(load_config(base=cfg), run_dir=run_dir, log=lambda m: None)
        result = trainer.fit()
        torch.save(trainer.distiller.state_dict(), Path(out) / f"rank{rank}.pt")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
        distributed.cleanup(wait=True)
    finally:
        distributed.cleanup()


def train_ranks(cfg: dict, tmp_path, world: int = 2) -> tuple[list[dict], dict]:
    """Train ``cfg`` with ``world`` DDP ranks (gloo, spawned processes) in ``tmp_path/ddp``: every rank's final
    distiller state, and rank 0's result."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks"
    out.mkdir()
    mp.start_processes(_rank_worker, args=(world, port, cfg, str(tmp_path / "ddp"), str(out)), nprocs=world,
                       start_method="spawn")
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]
    return states, json.loads((out / "rank0.json").read_text())
